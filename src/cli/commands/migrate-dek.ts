import { Command } from 'commander';
import { startMigration } from '../../client/migrations';
import { describeMigration } from '../format';
import { positiveInteger, targetOption, withContext } from '../options';
import { CliError, errorKind, errorType, failureMessage, InvalidRotationError } from '../../errors';

interface MigrateOptions {
  target: string;
  kekVersion?: string;
  tenantId?: string;
  dryRun?: boolean;
  batchSize?: number;
  parallelism?: number;
  wait?: boolean;
}

export function migrateDekCommand(): Command {
  return new Command('migrate-dek')
    .description(
      "move every legacy value encrypted directly by the KEK (Mycelium's v1) to the tenant's DEK (v2), provisioning missing DEKs",
    )
    .addOption(targetOption())
    .option(
      '--kek-version <n>',
      "the generation of the application's current KEK, while rekey's registry records none (default: the one every DEK is labelled with, or the label column's default)",
    )
    .option(
      '--tenant-id <id>',
      "only the values under this tenant's DEK (TOTP and webhook secrets are the system tenant's, the nil UUID)",
    )
    .option('--dry-run', 'decrypt and count every v1 value, list the tenants holding them; write nothing')
    .option('--batch-size <n>', 'values per batch', positiveInteger)
    .option('--parallelism <n>', 'parts migrated at once', positiveInteger)
    .option('--wait', 'wait until the run ends and print its report (a dry run always waits)')
    .action(
      withContext(async (context, options: MigrateOptions) => {
        let started;
        try {
          started = await startMigration(
            await context.temporal(),
            {
              target: options.target,
              ...(options.kekVersion !== undefined && { kekVersion: options.kekVersion }),
              ...(options.tenantId !== undefined && { tenantId: options.tenantId }),
              ...(options.dryRun && { dryRun: true }),
              ...(options.batchSize !== undefined && { batchSize: options.batchSize }),
              ...(options.parallelism !== undefined && { parallelism: options.parallelism }),
            },
            { taskQueue: context.options.taskQueue, keyspace: await context.targets().keyspace(options.target) },
          );
        } catch (err) {
          if (err instanceof InvalidRotationError) throw new CliError(err.message, 'invalid');
          throw err;
        }
        const { workflowId } = started.handle;
        if (started.kind === 'already-running') {
          throw new CliError(`a migration of target '${options.target}' is already running: ${workflowId}`, 'conflict');
        }
        if (!options.wait && !options.dryRun) {
          // Its plan step accepted it (a refusal was thrown above, with its kind).
          const { planned } = started;
          const legacy = planned?.fields.reduce((sum, field) => sum + field.legacyAtStart, 0);
          context.print({ workflowId, started: true, planned }, () => [
            `started migration ${workflowId} of target '${options.target}'` +
              (planned?.kekId !== undefined
                ? ` (new DEKs under KEK '${planned.kekId}'; ${legacy} legacy value(s))`
                : ''),
            ...(started.unanswered !== undefined
              ? [`  not validated yet: the worker's build does not answer it (${started.unanswered})`]
              : []),
            `  progress: rekey status ${workflowId} [--watch]`,
            `  pause:    rekey pause ${workflowId}   (resume, abort alike)`,
            `  Web UI:   ${context.webUiUrl(workflowId)}`,
          ]);
          return;
        }
        const report = await started.handle.result().catch((err: unknown) => {
          throw new CliError(`migration failed: ${failureMessage(err)}`, errorKind(err), errorType(err));
        });
        context.print({ workflowId, report }, () => [
          report.dryRun
            ? `dry run of the migration of target '${options.target}': nothing was written`
            : `migration of target '${options.target}' ${report.outcome}`,
          ...describeMigration(report).map((line) => `  ${line}`),
        ]);
        // Aborted meanwhile: it did not do what was asked (as `rekey status` of it says).
        if (report.outcome === 'aborted') {
          throw new CliError(`migration ${workflowId}: aborted: ${report.abortReason ?? 'by an operator'}`);
        }
      }),
    );
}
