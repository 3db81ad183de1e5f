import { WorkflowUpdateFailedError } from '@temporalio/client';
import { Command, Option } from 'commander';
import { isMigrationReference, runningMigration } from '../../client/migrations';
import { failureMessage, runningRotation } from '../../client/rotations';
import {
  abortMigrationUpdate,
  abortUpdate,
  confirmStepUpdate,
  overrideFleetGateUpdate,
  pauseMigrationUpdate,
  pauseUpdate,
  resumeMigrationUpdate,
  resumeUpdate,
  setGraceUpdate,
} from '../../workflows/messages';
import type { MigrationReport, RotationReport } from '../../workflows';
import type { CliContext } from '../context';
import { describeMigrationProgress, describeProgress } from '../format';
import { duration, withContext } from '../options';
import { CliError, errorKind, errorType } from '../../errors';

async function handleFor(context: CliContext, reference: string) {
  return runningRotation(await context.temporal(), reference, context.keyspaceOf);
}

async function update<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    // A validator's refusal: its message, and the exit code of its kind (bad input, or not possible now).
    if (err instanceof WorkflowUpdateFailedError)
      throw new CliError(failureMessage(err), errorKind(err), errorType(err));
    throw err;
  }
}

/** pause, resume and abort of a migration (`dek-migration-<target>`): the same words as for a rotation. */
async function controlMigration(
  context: CliContext,
  workflowId: string,
  control: 'pause' | 'resume' | 'abort',
  reason = '',
): Promise<void> {
  const handle = await runningMigration(await context.temporal(), workflowId, context.keyspaceOf);
  if (control === 'abort') {
    await update(() => handle.executeUpdate(abortMigrationUpdate, { args: [reason] }));
    const report: MigrationReport = await handle.result();
    context.print(report, () => [describeMigrationProgress(report)]);
    return;
  }
  const report = await update(() =>
    handle.executeUpdate(control === 'pause' ? pauseMigrationUpdate : resumeMigrationUpdate),
  );
  context.print(report, () => [`${control === 'pause' ? 'paused' : 'resumed'}: ${describeMigrationProgress(report)}`]);
}

export function controlCommands(): Command[] {
  const pause = new Command('pause')
    .description('no new batch starts; running slices stop at a batch boundary (a rotation or a migration)')
    .argument('<rotation>')
    .action(
      withContext(async (context, reference: string) => {
        if (isMigrationReference(reference)) return controlMigration(context, reference, 'pause');
        const handle = await handleFor(context, reference);
        const report = await update(() => handle.executeUpdate(pauseUpdate));
        context.print(report, () => [`paused at ${report.percent}%: ${describeProgress(report)}`]);
      }),
    );
  const resume = new Command('resume')
    .description('resume a paused rotation or migration')
    .argument('<rotation>')
    .action(
      withContext(async (context, reference: string) => {
        if (isMigrationReference(reference)) return controlMigration(context, reference, 'resume');
        const handle = await handleFor(context, reference);
        const report = await update(() => handle.executeUpdate(resumeUpdate));
        context.print(report, () => [`resumed at ${report.percent}%: ${describeProgress(report)}`]);
      }),
    );
  const abort = new Command('abort')
    .description('stop at a batch boundary and end with a report; both KEKs stay usable, nothing is retired')
    .argument('<rotation>')
    .option('--reason <text>', 'recorded in the report')
    .action(
      withContext(async (context, reference: string, options: { reason?: string }) => {
        if (isMigrationReference(reference)) return controlMigration(context, reference, 'abort', options.reason);
        const handle = await handleFor(context, reference);
        await update(() => handle.executeUpdate(abortUpdate, { args: [options.reason ?? ''] }));
        // Say what really happened: the run stops at its next safe point, which is where it ends.
        const report: RotationReport = await handle.result();
        if (report.outcome !== 'aborted') {
          throw new CliError(
            `the rotation was not aborted: it ended ${report.outcome}. ${report.note ?? ''}`,
            'conflict',
          );
        }
        context.print(report, () => [`aborted at ${report.percent}%: ${report.note ?? ''}`]);
      }),
    );
  const grace = new Command('grace')
    .description('extend or end the grace period; prints the new end time')
    .argument('<rotation>')
    .option('--extend <duration>', 'add this much, e.g. 2d', duration)
    .option('--end-now', 'end the grace period now: retire once the checks pass')
    .action(
      withContext(async (context, reference: string, options: { extend?: string; endNow?: boolean }) => {
        if (Boolean(options.extend) === Boolean(options.endNow)) {
          throw new CliError('give exactly one of --extend <duration> or --end-now', 'invalid');
        }
        const handle = await handleFor(context, reference);
        const answer = await update(() =>
          handle.executeUpdate(setGraceUpdate, { args: [{ extendBy: options.extend, endNow: options.endNow }] }),
        );
        context.print(answer, () => [
          answer.graceEndsAt !== undefined
            ? `grace period now ends at ${answer.graceEndsAt}`
            : `grace period is now ${answer.gracePeriod}; it starts once verify passes`,
        ]);
      }),
    );
  const overrideFleet = new Command('override-fleet')
    .description('promote (or run the last pass) without waiting for every application instance')
    .argument('<rotation>')
    .requiredOption('--reason <text>', 'why: recorded in the progress note')
    .action(
      withContext(async (context, reference: string, options: { reason: string }) => {
        const handle = await handleFor(context, reference);
        const report = await update(() => handle.executeUpdate(overrideFleetGateUpdate, { args: [options.reason] }));
        context.print(report, () => [report.note ?? 'fleet gate overridden']);
      }),
    );
  const confirm = new Command('confirm')
    .description(
      "tell a rotation that the application did the step it waits for (Talos's restart, Mycelium's settings)",
    )
    .argument('<rotation>')
    .addOption(
      new Option('--step <step>', 'the step the application owns').choices(['promote', 'retire']).makeOptionMandatory(),
    )
    .requiredOption('--note <text>', 'who did what: recorded in the progress')
    .action(
      withContext(async (context, reference: string, options: { step: 'promote' | 'retire'; note: string }) => {
        const handle = await handleFor(context, reference);
        const report = await update(() =>
          handle.executeUpdate(confirmStepUpdate, { args: [{ step: options.step, note: options.note }] }),
        );
        context.print(report, () => [report.note ?? `${options.step} confirmed`]);
      }),
    );
  return [pause, resume, abort, grace, overrideFleet, confirm];
}
