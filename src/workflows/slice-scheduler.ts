// Runs the pending parts of a rewrap pass, at most `parallelism` at once, until none is left or the run must stop
// (pause, abort, continue-as-new). A part cancelled by a pause or an abort goes back to the front of the queue and
// resumes later from its committed progress, under the same key.
import { CancellationScope, condition, isCancellation } from '@temporalio/workflow';
import type { SliceOutcome } from '../activities/rewrap';
import { addSliceResult } from '../rotation/progress';
import { slicesWithSummary } from './activity-proxies';
import type { PendingPart, RotationState } from './rotation-state';

export type SchedulerStop = 'done' | 'aborted' | 'continue-as-new';

export async function runPending(run: RotationState): Promise<SchedulerStop> {
  const inFlight = new Set<Promise<void>>();
  const { pending } = run.carried;
  let failure: Error | undefined;
  for (;;) {
    if (failure !== undefined) {
      // The first part that fails for good stops its siblings (at a batch boundary) before the run fails.
      if (inFlight.size === 0) throw failure;
      run.cancelRunningSlices();
    }
    if (run.aborted && inFlight.size === 0) return 'aborted';
    const rotate = run.shouldContinueAsNew();
    if (rotate && inFlight.size === 0) return 'continue-as-new';
    if (run.progress.paused) run.holding(`the next rewrap batch (pass ${run.progress.passes})`);
    while (
      failure === undefined &&
      !run.aborted &&
      !run.progress.paused &&
      !rotate &&
      inFlight.size < run.settings.parallelism &&
      pending.length > 0
    ) {
      const part = pending.shift()!;
      const promise: Promise<void> = runPart(run, part)
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
    const { paused } = run.progress;
    const { aborted } = run;
    const failed = failure !== undefined;
    await condition(
      () =>
        inFlight.size < started ||
        pending.length !== pendingBefore ||
        run.progress.paused !== paused ||
        run.aborted !== aborted ||
        (failure !== undefined) !== failed,
    );
  }
}

async function runPart(run: RotationState, part: PendingPart): Promise<void> {
  const scope = new CancellationScope();
  run.track(part.progressKey, scope);
  const { carried, settings } = run;
  let outcome: SliceOutcome;
  try {
    const summary = `rewrap ${part.label ?? 'slice'}${part.part > 0 ? ` (part ${part.part + 1})` : ''}, pass ${part.pass}`;
    outcome = await scope.run(() =>
      slicesWithSummary(summary).rewrapSlice({
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
      }),
    );
  } catch (err) {
    // Paused or aborted: the part resumes later from its committed progress, under the same key. Once a cancel is
    // requested the server no longer retries the activity, so a failure that races it (a dead worker's heartbeat
    // timeout, a database error) means the same: the part was stopped, and runs again on resume.
    // The part's own scope says whether a cancel was requested, even if a resume came before its failure did.
    if (!isCancellation(err) && !scope.consideredCancelled) throw err;
    carried.pending.unshift(part);
    return;
  } finally {
    run.untrack(part.progressKey);
  }
  run.progress = addSliceResult(run.progress, outcome.counters, outcome.failures);
  if (!outcome.done) {
    carried.pending.push({ ...part, range: { ...part.range, after: outcome.cursor }, part: part.part + 1 });
  }
}
