// The scheduling of a run of batches whose calls go to a remote key store (AWS KMS, Vault Transit): up to `ahead`
// batches have their calls under way at once in one window of calls (CallWindow), so that a slow or throttled call
// does not hold the calls of the batches after it; the batches are still taken (written, or their results added up)
// one after another, in the order they were read. Plain logic over the steps it is given, unit-tested with calls the
// test answers itself (test/rewrap/batch-pipeline.test.ts).
import { CallsStoppedError, type CallWindow } from '../crypto/request-pacer';

/** What the pipeline asks before it reads a batch. */
export type NextStep =
  /** Read the next batch. */
  | 'read'
  /** Read no more; the batches read are still taken (a time budget spent). */
  | 'finish'
  /** Stop now (a pause, an abort): no call starts again, and a batch some of whose calls never started is not taken. */
  | 'stop';

export interface BatchSteps<B, P> {
  /** Before each read, with the number of batches read so far. */
  next(batchesRead: number): NextStep;
  /** The batch after the last one read; undefined when none is left. */
  read(): Promise<B | undefined>;
  /** Starts the batch's calls (in `calls` when pipelined); what it resolves to is taken in order. */
  start(batch: B, calls: CallWindow | undefined): Promise<P>;
  /**
   * Takes a batch whose calls have all answered, in the order read. What it returns is awaited before the next batch
   * is taken and before the pipeline returns (so a write may run while the next batches' calls go on).
   */
  take(prepared: P, batch: B): Promise<void>;
}

export interface PipelineOptions {
  /** The window the batches' calls share; without it one batch is under way at a time. */
  calls?: CallWindow;
  /** At most this many batches read and not yet taken (1 without `calls`). */
  ahead?: number;
}

/**
 * Runs the batches: returns `done` true when `read` found none left, false when stopped ('stop', 'finish', or a batch
 * whose calls the window's closing left unstarted). The first batch that fails fails the run: the window is closed
 * (no call of any batch starts again), nothing after it is taken, and the run rejects once every call under way has
 * answered and the last take has ended.
 */
export async function runBatchPipeline<B, P>(
  steps: BatchSteps<B, P>,
  options: PipelineOptions = {},
): Promise<{ done: boolean; batchesRead: number }> {
  const calls = options.calls;
  const ahead = calls ? Math.max(1, options.ahead ?? 1) : 1;
  const queue: { prepared: Promise<P>; batch: B }[] = [];
  let taking: Promise<void> = Promise.resolve();
  let done = false;
  let stopped = false;
  let batchesRead = 0;
  try {
    for (;;) {
      // The next batch is read when none is under way, or, pipelined, while the window has a slot no call waits for.
      if (!done && !stopped && (queue.length === 0 || (queue.length < ahead && calls?.hasSlack === true))) {
        const step = steps.next(batchesRead);
        if (step !== 'read') {
          stopped = true;
          if (step === 'stop') calls?.close();
          continue;
        }
        const batch = await steps.read();
        if (batch === undefined) {
          done = true;
          continue;
        }
        batchesRead++;
        const prepared = steps.start(batch, calls);
        // A batch that fails fails the run: no call of the batches after it starts. Until it is awaited, its failure
        // must not count as unhandled.
        prepared.catch(() => calls?.close());
        queue.push({ prepared, batch });
        continue;
      }
      const head = queue[0];
      if (head === undefined) break;
      if (calls && !done && !stopped && queue.length < ahead) {
        // Wait for the first batch, or for a slot to free up (then read another).
        const settled = await Promise.race([
          head.prepared.then(
            () => true,
            () => true,
          ),
          calls.slack().then(() => false),
        ]);
        if (!settled) continue;
      }
      queue.shift();
      let prepared: P;
      try {
        prepared = await head.prepared;
      } catch (err) {
        if (!(err instanceof CallsStoppedError)) throw err;
        // The window closed before all of this batch's calls started: neither it nor any batch after it is taken.
        // A batch after it that failed is the run's failure; otherwise the run stopped here.
        for (const settled of await Promise.allSettled(queue.map((q) => q.prepared))) {
          if (settled.status === 'rejected' && !(settled.reason instanceof CallsStoppedError)) throw settled.reason;
        }
        queue.length = 0;
        done = false;
        break;
      }
      await taking;
      taking = steps.take(prepared, head.batch);
      // Awaited before the next take or at the end; until then a failure must not count as unhandled.
      taking.catch(() => undefined);
    }
  } finally {
    // Nothing of the run is in flight once it returns or fails: no call starts, those under way answer.
    calls?.close();
    await Promise.allSettled(queue.map((q) => q.prepared));
    await taking;
  }
  return { done, batchesRead };
}
