import { Command, InvalidArgumentError } from 'commander';
import { GENERATION } from '../../targets/target';
import { failureMessage, startRotation, type StartOutcome } from '../../client/rotations';
import {
  DEFAULTS,
  describeTargetKek,
  MIN_RESTORE_WINDOW,
  parseRotationRequest,
  refuseShortRestoreWindow,
  type RotationRequest,
} from '../../rotation/rotation-input';
import { describeCensus, describeCounters } from '../format';
import { duration, positiveInteger, targetOption, withContext } from '../options';
import { watchRotation } from './status';
import { CliError, errorKind, errorType, InvalidRotationError } from '../../errors';

interface RotateOptions {
  target: string;
  from?: string;
  to?: string;
  fromVersion?: number;
  toVersion?: number;
  dryRun?: boolean;
  tenantId?: string;
  batchSize?: number;
  parallelism?: number;
  grace?: string;
  restoreWindow?: string;
  confirmTimeout?: string;
  wait?: boolean;
  allowLegacyValues?: string;
  allowShortRestoreWindow?: string;
}

function generation(value: string): number {
  if (!GENERATION.test(value)) throw new InvalidArgumentError('expected a KEK generation: 1, 2, ...');
  return Number(value);
}

/** `--from`/`--from-version` (Mycelium's spelling), exactly one of them. */
function pick(id: string | undefined, version: number | undefined, name: 'from' | 'to'): string {
  if (id !== undefined && version !== undefined) {
    throw new CliError(`give --${name} or --${name}-version, not both`, 'invalid');
  }
  if (id === undefined && version === undefined) {
    throw new CliError(`--${name} <id> (or --${name}-version <n>) is required`, 'invalid');
  }
  return id ?? String(version);
}

export function rotateCommand(): Command {
  return new Command('rotate')
    .description('start a KEK rotation of one target: provision, promote, rewrap, verify, grace, retire')
    .addOption(targetOption())
    .option('--from <id>', "the KEK in use now ('current' for the active one)")
    .option('--to <id>', "the KEK to rotate to, or 'new' to generate one")
    .option('--from-version <n>', "the KEK generation in use now (Mycelium's kek_version)", generation)
    .option('--to-version <n>', 'the KEK generation to rotate to', generation)
    .option(
      '--dry-run',
      'count what a real run would do (Migrated / Already done / Skipped / Unreadable / Relabelled); write nothing',
    )
    .option('--tenant-id <id>', 'canary: rotate this one row under the new KEK and stop')
    .option('--batch-size <n>', `rows per batch (default: ${DEFAULTS.batchSize})`, positiveInteger)
    .option('--parallelism <n>', `slices rewrapped at once (default: ${DEFAULTS.parallelism})`, positiveInteger)
    .option(
      '--grace <duration>',
      'how long the old KEK stays decrypt-only before it is retired',
      duration,
      DEFAULTS.gracePeriod,
    )
    .option(
      '--restore-window <duration>',
      `how long the retired KEK stays restorable (rekey keys restore) before it is destroyed (default: ${DEFAULTS.restoreWindow})`,
      duration,
    )
    .option(
      '--confirm-timeout <duration>',
      `how long a step the application owns waits for its evidence or a confirmation (default: ${DEFAULTS.confirmTimeout})`,
      duration,
    )
    .option(
      '--allow-legacy-values <reason>',
      'rotate although v1 values encrypted directly by the KEK remain (they become unreadable once it retires)',
    )
    .option(
      '--allow-short-restore-window <reason>',
      `accept a --restore-window shorter than ${MIN_RESTORE_WINDOW} (down to 0s: destroyed as soon as the window's step runs), for this reason`,
    )
    .option('--wait', 'watch the run until it ends')
    .action(
      withContext(async (context, options: RotateOptions) => {
        const from = pick(options.from, options.fromVersion, 'from');
        const to = pick(options.to, options.toVersion, 'to');
        const request: RotationRequest = {
          target: options.target,
          from,
          to,
          dryRun: options.dryRun,
          tenantId: options.tenantId,
          batchSize: options.batchSize,
          parallelism: options.parallelism,
          gracePeriod: options.grace,
          confirmTimeout: options.confirmTimeout,
          ...(options.restoreWindow !== undefined && { restoreWindow: options.restoreWindow }),
          ...(options.allowLegacyValues !== undefined && { allowLegacyValues: options.allowLegacyValues }),
          ...(options.allowShortRestoreWindow !== undefined && {
            allowShortRestoreWindow: options.allowShortRestoreWindow,
          }),
        };
        let started: StartOutcome;
        try {
          // Bad input is reported even when Temporal is unreachable.
          refuseShortRestoreWindow(request, parseRotationRequest(request));
          // The keyspace of the database DATABASE_URL names: the rotation's id, and what every step checks.
          const keyspace = await context.targets().keyspace(options.target);
          started = await startRotation(await context.temporal(), request, {
            taskQueue: context.options.taskQueue,
            keyspace,
            startedBy: 'rekey CLI',
          });
        } catch (err) {
          if (err instanceof InvalidRotationError) throw new CliError(err.message, 'invalid');
          throw err;
        }
        const { opId } = started;
        if (started.kind === 'already-running') {
          throw new CliError(
            `a rotation of target '${options.target}' is already running: ${opId}; watch it with 'rekey status ${opId} --watch'`,
            'conflict',
          );
        }
        const versions = options.fromVersion !== undefined || options.toVersion !== undefined;
        const header = versions ? [`From version: ${from}`, `To version: ${to}`] : [];
        // Validate accepted it (a refusal was thrown above, with its kind); `current` is now a KEK id.
        const { validated } = started;
        if (options.dryRun) {
          const report = await started.handle.result().catch((err: unknown) => {
            throw new CliError(`dry run failed: ${failureMessage(err)}`, errorKind(err), errorType(err));
          });
          context.print({ opId, dryRun: true, report }, () => [
            `dry run of target '${options.target}', '${report.from}' → ${describeTargetKek(report.to)}: nothing was written`,
            ...header.map((line) => `  ${line}`),
            `  ${describeCounters(report)}`,
            ...describeCensus(report).map((line) => `  ${line}`),
          ]);
          return;
        }
        if (validated?.outcome === 'nothing-to-do') {
          // Validate decided there is nothing to do (already done, or a KEK too young for a scheduled run): the run
          // ends saying why, which is shown as rekey status shows it.
          if (context.options.json) {
            context.out(JSON.stringify({ opId, workflowId: started.handle.workflowId, started: true, validated }));
            return;
          }
          await watchRotation(context, opId);
          return;
        }
        if (!context.options.json) {
          const kekFrom = validated?.from ?? from;
          const kekTo = validated?.to ?? to;
          context.out(
            `started rotation ${opId} of target '${options.target}' ('${kekFrom}' → ${describeTargetKek(kekTo)})`,
          );
          if (started.unanswered !== undefined) {
            context.out(`  not validated yet: the worker's build does not answer it (${started.unanswered})`);
          }
          for (const line of header) context.out(`  ${line}`);
          context.out(`  watch:    rekey status ${opId} --watch`);
          context.out(`  Web UI:   ${context.webUiUrl(started.handle.workflowId)}`);
          context.out(`  temporal: temporal workflow query --workflow-id ${started.handle.workflowId} --name progress`);
        } else if (!options.wait) {
          context.out(JSON.stringify({ opId, workflowId: started.handle.workflowId, started: true, validated }));
        }
        if (options.wait) await watchRotation(context, opId);
      }),
    );
}
