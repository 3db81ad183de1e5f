// Runs the pending parts of a pass, at most `parallelism` at once, until none is left or the run must stop (pause,
// abort, continue-as-new). A part cancelled by a pause or an abort goes back to the front of the queue and resumes
// later from its committed progress, under the same key. One engine for the rotation's rewrap passes (runPending) and
// the migration's (runMigrationParts); what differs between them is a parameter of PartSchedule.
import { CancellationScope, condition, isCancellation, patched } from '@temporalio/workflow';
import type { SliceOutcome } from '../activities/rewrap';
import type { FieldSliceOutcome, RowSliceOutcome } from '../activities/migrate';
import { addSliceResult } from '../rotation/progress';
import { slices, slicesWithSummary } from './activity-proxies';
import type { MigrationPart, MigrationState } from './migration-state';
import type { PendingPart, RotationState } from './rotation-state';

export type SchedulerStop = 'done' | 'aborted' | 'continue-as-new';

/**
 * Marks runs whose wait in a pass (a pass paused mid-way, and the migration's pause between passes) also ends once the
 * history has passed the bound (`shouldContinueAsNew`), so that a run paused for days while signals and updates
 * arrive continues as new, as the rotation's other waits do under HISTORY_BOUND_PATCH. Runs without it woke only when
 * a part, a pause or an abort changed, and grew by every message sent to them meanwhile.
 */
export const PAUSED_BOUND_PATCH = 'hygiene3-paused-bound-1';

/** What the engine needs of a run: its queue, its controls, and how one part runs and is taken in. */
export interface PartSchedule<P, O> {
  /** The parts still to run, in order; the engine takes from the front. */
  readonly pending: P[];
  readonly parallelism: number;
  paused(): boolean;
  aborted(): boolean;
  shouldContinueAsNew(): boolean;
  /** Called on every turn while the run is paused (the rotation shows what it holds before). */
  whilePaused?(): void;
  /**
   * Parts of different groups never run at the same time: the group of the part at the front of the queue runs
   * until none of it is in flight. Absent: any parts run together.
   */
  groupOf?(part: P): string | number;
  /** Where a part that stopped at its time budget goes on: next ('front'), or after the parts queued ('back'). */
  continueAt: 'front' | 'back';
  /** The key its cancellation scope is tracked under while it runs. */
  key(part: P): string;
  track(key: string, scope: CancellationScope): void;
  untrack(key: string): void;
  cancelRunning(): void;
  /** Runs the part's activity. */
  run(part: P): Promise<O>;
  /** Takes in what a part did; returns the part that goes on from where it stopped, if it did not finish. */
  took(part: P, outcome: O): P | undefined;
}

export async function runParts<P, O>(schedule: PartSchedule<P, O>): Promise<SchedulerStop> {
  const inFlight = new Set<Promise<void>>();
  const { pending } = schedule;
  let failure: Error | undefined;
  let group: string | number | undefined;
  const sameGroup = (part: P) => schedule.groupOf === undefined || schedule.groupOf(part) === group;
  for (;;) {
    if (failure !== undefined) {
      // The first part that fails for good stops its siblings (at a batch boundary) before the run fails.
      if (inFlight.size === 0) throw failure;
      schedule.cancelRunning();
    }
    if (schedule.aborted() && inFlight.size === 0) return 'aborted';
    const rotate = schedule.shouldContinueAsNew();
    if (rotate && inFlight.size === 0) return 'continue-as-new';
    if (schedule.paused()) schedule.whilePaused?.();
    if (inFlight.size === 0 && schedule.groupOf !== undefined && pending.length > 0) {
      group = schedule.groupOf(pending[0]!);
    }
    while (
      failure === undefined &&
      !schedule.aborted() &&
      !schedule.paused() &&
      !rotate &&
      inFlight.size < schedule.parallelism &&
      pending.length > 0 &&
      sameGroup(pending[0]!)
    ) {
      const part = pending.shift()!;
      const promise: Promise<void> = runPart(schedule, part)
        .catch((err: unknown) => {
          failure ??= err instanceof Error ? err : new Error(String(err));
        })
        .finally(() => inFlight.delete(promise));
      inFlight.add(promise);
    }
    if (inFlight.size === 0 && pending.length === 0) return 'done';
    // Sleep until something changes: a part finishes (or is handed back), pause, resume, abort.
    const started = inFlight.size;
    const pendingBefore = pending.length;
    const paused = schedule.paused();
    const aborted = schedule.aborted();
    const failed = failure !== undefined;
    // Also once the history passes the bound (then, with no part in flight, the run continues as new at the top of
    // the loop). Not when it has already: the run then only waits for its parts in flight to stop.
    const bounded = !rotate && patched(PAUSED_BOUND_PATCH);
    await condition(
      () =>
        inFlight.size < started ||
        pending.length !== pendingBefore ||
        schedule.paused() !== paused ||
        schedule.aborted() !== aborted ||
        (failure !== undefined) !== failed ||
        (bounded && schedule.shouldContinueAsNew()),
    );
  }
}

async function runPart<P, O>(schedule: PartSchedule<P, O>, part: P): Promise<void> {
  const scope = new CancellationScope();
  const key = schedule.key(part);
  schedule.track(key, scope);
  let outcome: O;
  try {
    outcome = await scope.run(() => schedule.run(part));
  } catch (err) {
    // Paused or aborted: the part resumes later from its committed progress, under the same key. Once a cancel is
    // requested the server no longer retries the activity, so a failure that races it (a dead worker's heartbeat
    // timeout, a database error) means the same: the part was stopped, and runs again on resume.
    // The part's own scope says whether a cancel was requested, even if a resume came before its failure did.
    if (!isCancellation(err) && !scope.consideredCancelled) throw err;
    schedule.pending.unshift(part);
    return;
  } finally {
    schedule.untrack(key);
  }
  const next = schedule.took(part, outcome);
  if (next === undefined) return;
  if (schedule.continueAt === 'front') schedule.pending.unshift(next);
  else schedule.pending.push(next);
}

/** The rotation's rewrap pass: parts of any slice run together; a part stopped by its budget goes on last. */
export function runPending(run: RotationState): Promise<SchedulerStop> {
  const { carried, settings } = run;
  return runParts<PendingPart, SliceOutcome>({
    pending: carried.pending,
    parallelism: settings.parallelism,
    paused: () => run.progress.paused,
    aborted: () => run.aborted,
    shouldContinueAsNew: () => run.shouldContinueAsNew(),
    whilePaused: () => run.holding(`the next rewrap batch (pass ${run.progress.passes})`),
    continueAt: 'back',
    key: (part) => part.progressKey,
    track: (key, scope) => run.track(key, scope),
    untrack: (key) => run.untrack(key),
    cancelRunning: () => run.cancelRunningSlices(),
    run: (part) => {
      const summary = `rewrap ${part.label ?? 'slice'}${part.part > 0 ? ` (part ${part.part + 1})` : ''}, pass ${part.pass}`;
      return slicesWithSummary(summary).rewrapSlice({
        ...run.on,
        from: carried.from,
        to: carried.to,
        range: part.range,
        tenantId: settings.tenantId,
        batchSize: settings.batchSize,
        dryRun: settings.dryRun,
        timeBudgetMs: settings.sliceTimeBudgetMs,
        progressKey: `${part.progressKey}/part-${part.part}`,
        countExisting: part.pass === 1 && part.part === 0 && part.scan === undefined,
        ...(part.scan && { scan: part.scan }),
      });
    },
    took: (part, outcome) => {
      run.progress = addSliceResult(run.progress, outcome.counters, outcome.failures);
      return outcome.done
        ? undefined
        : { ...part, range: { ...part.range, after: outcome.cursor }, part: part.part + 1 };
    },
  });
}

/**
 * The migration's pass. Parts of rows (every legacy field of a row written in one statement) run together. Parts of
 * one field (runs planned before MIGRATION_ROWS_PATCH) run one field at a time: two fields of one row must not lock
 * the same rows in two orders. A part stopped by its budget goes on next.
 */
export function runMigrationParts(state: MigrationState): Promise<SchedulerStop> {
  const { report, settings } = state;
  return runParts<MigrationPart, FieldSliceOutcome | RowSliceOutcome>({
    pending: state.carried.pending,
    parallelism: settings.parallelism,
    paused: () => report.paused,
    aborted: () => state.aborted,
    shouldContinueAsNew: () => state.shouldContinueAsNew(),
    groupOf: (part) => (part.fields ? 'rows' : part.field),
    continueAt: 'front',
    key: (part) => `${part.slice}/part-${part.part}`,
    track: (key, scope) => state.track(key, scope),
    untrack: (key) => state.untrack(key),
    cancelRunning: () => state.cancelRunningParts(),
    run: (part) => {
      const args = {
        ...state.on,
        kekId: report.kekId!,
        range: part.range,
        ...(report.tenantId !== undefined && { tenant: report.tenantId }),
        batchSize: settings.batchSize,
        dryRun: report.dryRun,
        timeBudgetMs: settings.timeBudgetMs,
        progressKey: `${part.slice}/part-${part.part}`,
        countExisting: part.countExisting && part.part === 0,
      };
      return part.fields
        ? slices.migrateRowSlice({ ...args, fields: part.fields })
        : slices.migrateFieldSlice({ ...args, field: part.field });
    },
    took: (part, outcome) => state.took(part, outcome),
  });
}
