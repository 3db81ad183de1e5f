import { Command } from 'commander';
import { failureMessage, startRotation, type StartOutcome } from '../../client/rotations';
import { InvalidRotationError, parseRotationRequest, type RotationRequest } from '../../rotation/rotation-input';
import { CliError, EXIT } from '../context';
import { describeCounters } from '../format';
import { duration, positiveInteger, withContext } from '../options';
import { watchRotation } from './status';

interface RotateOptions {
  from: string;
  to: string;
  dryRun?: boolean;
  tenantId?: string;
  batchSize?: number;
  parallelism?: number;
  grace?: string;
  wait?: boolean;
}

export function rotateCommand(): Command {
  return new Command('rotate')
    .description('start a KEK rotation: provision, promote, rewrap, verify, grace, retire')
    .requiredOption('--from <id>', "the KEK in use now ('current' for the active one)")
    .requiredOption('--to <id>', "the KEK to rotate to, or 'new' to generate one")
    .option(
      '--dry-run',
      'count what a real run would do (Migrated / Skipped / Already done / Unreadable); write nothing',
    )
    .option('--tenant-id <id>', 'canary: rotate this one tenant under the new KEK and stop')
    .option('--batch-size <n>', 'DEKs per batch', positiveInteger)
    .option('--parallelism <n>', 'slices rewrapped at once', positiveInteger)
    .option('--grace <duration>', 'how long the old KEK stays decrypt-only before it is retired', duration, '7d')
    .option('--wait', 'watch the run until it ends')
    .action(
      withContext(async (context, options: RotateOptions) => {
        const request: RotationRequest = {
          from: options.from,
          to: options.to,
          dryRun: options.dryRun,
          tenantId: options.tenantId,
          batchSize: options.batchSize,
          parallelism: options.parallelism,
          gracePeriod: options.grace,
        };
        let started: StartOutcome;
        try {
          parseRotationRequest(request); // bad input is reported even when Temporal is unreachable
          started = await startRotation(await context.temporal(), request, { taskQueue: context.options.taskQueue });
        } catch (err) {
          if (err instanceof InvalidRotationError) throw new CliError(err.message, EXIT.usage);
          throw err;
        }
        const id = started.handle.workflowId;
        if (started.kind === 'already-running') {
          throw new CliError(
            `rotation ${id} is already running: watch it with 'rekey status ${id} --watch'`,
            EXIT.conflict,
          );
        }
        if (started.kind === 'already-done') {
          context.print({ workflowId: id, alreadyDone: true, report: started.report }, () => [
            `already done: rotation ${id} ${started.report.outcome} ('${started.report.from}' → '${started.report.to}')`,
            `  ${describeCounters(started.report)}`,
          ]);
          return;
        }
        if (options.dryRun) {
          const report = await started.handle.result().catch((err: unknown) => {
            throw new CliError(`dry run failed: ${failureMessage(err)}`);
          });
          context.print({ workflowId: id, dryRun: true, report }, () => [
            `dry run of '${report.from}' → '${report.to}': nothing was written`,
            `  ${describeCounters(report)}`,
          ]);
          return;
        }
        if (!context.options.json) {
          context.out(`started rotation ${id} ('${options.from}' → '${options.to}')`);
          context.out(`  watch:    rekey status ${id} --watch`);
          context.out(`  Web UI:   ${context.webUiUrl(id)}`);
          context.out(`  temporal: temporal workflow query --workflow-id ${id} --name progress`);
        } else if (!options.wait) {
          context.out(JSON.stringify({ workflowId: id, started: true }));
        }
        if (options.wait) await watchRotation(context, id);
      }),
    );
}
