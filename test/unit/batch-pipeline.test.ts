import { describe, expect, it } from 'vitest';
import { RequestPacer, type CallWindow } from '../../src/crypto/request-pacer';
import { runBatchPipeline, type BatchSteps, type NextStep } from '../../src/rewrap/batch-pipeline';

// The pipeline's scheduling driven by calls the test answers itself: nothing here waits on a clock. With no rate, the
// pacer starts a call as soon as it has a slot, so everything between two answers happens in microtasks: one turn
// of the event loop (setImmediate) lets it all run.
const turn = () => new Promise((resolve) => setImmediate(resolve));

/** A promise the test resolves or rejects. */
function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/**
 * Batches of `size` calls each, `batches` of them; every call waits for the test to answer it (`answer('b2', 0)`), and
 * the steps record what the pipeline did, in order.
 */
function harness(options: { batches: number; size: number; window: number; next?: (read: number) => NextStep }) {
  const pacer = new RequestPacer({ concurrency: options.window, ratePerSecond: 0 });
  const calls: CallWindow = pacer.window();
  const log: string[] = [];
  const answers = new Map<string, ReturnType<typeof deferred<string>>>();
  const answerOf = (key: string) => {
    if (!answers.has(key)) answers.set(key, deferred<string>());
    return answers.get(key)!;
  };
  const takes: ReturnType<typeof deferred<void>>[] = [];
  let read = 0;
  let inFlight = 0;
  const steps: BatchSteps<string, string[]> = {
    next: options.next ?? (() => 'read'),
    read: () => {
      if (read >= options.batches) return Promise.resolve(undefined);
      const batch = `b${read++}`;
      log.push(`read ${batch}`);
      return Promise.resolve(batch);
    },
    start: (batch, window) =>
      pacer.mapIn(window, [...Array(options.size).keys()], async (n) => {
        inFlight++;
        log.push(`call ${batch}.${n}`);
        try {
          return await answerOf(`${batch}.${n}`).promise;
        } finally {
          inFlight--;
        }
      }),
    take: (prepared, batch) => {
      log.push(`take ${batch} [${prepared.join(',')}]`);
      const taken = deferred<void>();
      takes.push(taken);
      return taken.promise.then(() => void log.push(`taken ${batch}`));
    },
  };
  return {
    calls,
    log,
    steps,
    inFlight: () => inFlight,
    answer: (key: string, value = key) => answerOf(key).resolve(value),
    fail: (key: string, error: Error) => answerOf(key).reject(error),
    /** Ends the take of the `i`th batch taken. */
    endTake: (i: number) => takes[i]!.resolve(),
    started: (batch: string) => log.filter((line) => line.startsWith(`call ${batch}.`)).length,
  };
}

describe('the batch pipeline of a remote key store (runBatchPipeline)', () => {
  it('takes the batches in the order read, though a later batch answers first', async () => {
    const h = harness({ batches: 3, size: 2, window: 6 });
    const run = runBatchPipeline(h.steps, { calls: h.calls, ahead: 3 });
    await turn();
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0', 'read b1', 'read b2']);
    // b2 and b1 answer in full before b0: nothing is taken until b0 has.
    for (const key of ['b2.0', 'b2.1', 'b1.0', 'b1.1', 'b0.1']) h.answer(key);
    await turn();
    expect(h.log.some((l) => l.startsWith('take'))).toBe(false);
    h.answer('b0.0');
    await turn();
    // b0 is taken; b1 waits until b0's take has ended (one write at a time).
    expect(h.log.filter((l) => l.startsWith('take'))).toEqual(['take b0 [b0.0,b0.1]']);
    h.endTake(0);
    await turn();
    h.endTake(1);
    await turn();
    h.endTake(2);
    expect(await run).toEqual({ done: true, batchesRead: 3 });
    expect(h.log.filter((l) => l.startsWith('take') || l.startsWith('taken'))).toEqual([
      'take b0 [b0.0,b0.1]',
      'taken b0',
      'take b1 [b1.0,b1.1]',
      'taken b1',
      'take b2 [b2.0,b2.1]',
      'taken b2',
    ]);
  });

  it('reads no batch while every slot is held or waited for, nor more than `ahead` batches not yet taken', async () => {
    // A window of 2: b0's two calls fill it; b1 is read only once a slot is free and no call waits for one.
    const h = harness({ batches: 10, size: 2, window: 2 });
    const run = runBatchPipeline(h.steps, { calls: h.calls, ahead: 3 });
    await turn();
    expect(h.log).toEqual(['read b0', 'call b0.0', 'call b0.1']);
    h.answer('b0.1');
    await turn();
    // A slot freed: b1 is read, its first call takes it, and its second waits: no b2 yet.
    expect(h.log.slice(3)).toEqual(['read b1', 'call b1.0']);
    expect(h.inFlight()).toBe(2);
    h.answer('b1.0');
    await turn();
    expect(h.log.slice(5)).toEqual(['call b1.1']);
    h.answer('b1.1');
    await turn();
    // A slot freed again: b2 is read and its calls start; b0 still holds one slot, not answered.
    expect(h.log.slice(6)).toEqual(['read b2', 'call b2.0']);
    h.answer('b2.0');
    await turn();
    h.answer('b2.1');
    await turn();
    // Three batches read and none taken (b0 has not answered): `ahead` reached, no fourth is read although a slot is free.
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0', 'read b1', 'read b2']);
    expect(h.inFlight()).toBe(1);
    h.answer('b0.0');
    await turn();
    // b0 taken: a fourth batch is read while b0's take goes on.
    expect(h.log.filter((l) => l.startsWith('read')).at(-1)).toBe('read b3');
    expect(h.log).toContain('take b0 [b0.0,b0.1]');
    expect(h.log.some((l) => l.startsWith('take b1'))).toBe(false);
    // Stop the run here: the test has seen what it wanted; answer everything so it ends.
    h.calls.close();
    for (let b = 0; b < 10; b++) for (let n = 0; n < 2; n++) h.answer(`b${b}.${n}`);
    for (let i = 0; i < 4; i++) {
      await turn();
      if (i < h.log.filter((l) => l.startsWith('take ')).length) h.endTake(i);
    }
    await run;
  });

  it('without a window, one batch at a time: the next is read only once the one before is taken', async () => {
    const h = harness({ batches: 2, size: 2, window: 8 });
    const run = runBatchPipeline(h.steps, { ahead: 8 });
    await turn();
    h.answer('b0.0');
    await turn();
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0']);
    h.answer('b0.1');
    await turn();
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0', 'read b1']);
    h.answer('b1.0');
    h.answer('b1.1');
    h.endTake(0);
    await turn();
    h.endTake(1);
    expect(await run).toEqual({ done: true, batchesRead: 2 });
  });

  it('stopped (a pause) while batches are under way: no call starts again, a batch with calls not started is not taken, and the run returns only once the calls under way have answered', async () => {
    let stop = false;
    const h = harness({ batches: 10, size: 3, window: 4, next: () => (stop ? 'stop' : 'read') });
    let returned = false;
    const run = runBatchPipeline(h.steps, { calls: h.calls, ahead: 4 }).finally(() => (returned = true));
    await turn();
    // b0's three calls and b1's first hold the window; b1's other two wait.
    expect([...h.log].sort()).toEqual(['call b0.0', 'call b0.1', 'call b0.2', 'call b1.0', 'read b0', 'read b1']);
    // The slice's keep-alive closes the window when it is told to stop (rewrapSlice), and the run is told so too.
    stop = true;
    h.calls.close();
    h.answer('b0.0');
    h.answer('b0.1');
    h.answer('b0.2');
    await turn();
    // b0 answered in full: taken. b1's call under way has not answered: the run has not returned.
    expect(h.log).toContain('take b0 [b0.0,b0.1,b0.2]');
    h.endTake(0);
    await turn();
    expect(returned).toBe(false);
    h.answer('b1.0');
    expect(await run).toEqual({ done: false, batchesRead: 2 });
    // b1's other calls never started, so b1 was not taken, and no batch was read after it.
    expect(h.started('b1')).toBe(1);
    expect(h.log.some((l) => l.startsWith('take b1'))).toBe(false);
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0', 'read b1']);
    expect(h.calls.calls).toBe(0);
  });

  it('told to stop when it would read: the window closes, and a batch whose calls had all started is still taken', async () => {
    let stop = false;
    const h = harness({ batches: 10, size: 1, window: 2, next: () => (stop ? 'stop' : 'read') });
    const run = runBatchPipeline(h.steps, { calls: h.calls, ahead: 4 });
    await turn();
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0', 'read b1']);
    stop = true;
    h.answer('b0.0');
    await turn();
    // A slot freed: asked before reading b2, the run is told to stop, and closes the window.
    expect(h.calls.closed).toBe(true);
    expect(h.log).toContain('take b0 [b0.0]');
    h.endTake(0);
    h.answer('b1.0');
    await turn();
    h.endTake(1);
    expect(await run).toEqual({ done: false, batchesRead: 2 });
    expect(h.log.filter((l) => l.startsWith('take '))).toEqual(['take b0 [b0.0]', 'take b1 [b1.0]']);
  });

  it("'finish' (a time budget spent): reads no more, but takes every batch read", async () => {
    const h = harness({ batches: 10, size: 1, window: 4, next: (read) => (read < 2 ? 'read' : 'finish') });
    const run = runBatchPipeline(h.steps, { calls: h.calls, ahead: 4 });
    await turn();
    h.answer('b1.0');
    h.answer('b0.0');
    await turn();
    h.endTake(0);
    await turn();
    h.endTake(1);
    expect(await run).toEqual({ done: false, batchesRead: 2 });
    expect(h.log.filter((l) => l.startsWith('take '))).toEqual(['take b0 [b0.0]', 'take b1 [b1.0]']);
  });

  it('a failed batch fails the run: no call starts again, nothing from it on is taken, and the run rejects once the calls under way answered', async () => {
    const h = harness({ batches: 10, size: 2, window: 4 });
    let settled = false;
    const run = runBatchPipeline(h.steps, { calls: h.calls, ahead: 2 }).finally(() => (settled = true));
    await turn();
    expect([...h.log].sort()).toEqual(['call b0.0', 'call b0.1', 'call b1.0', 'call b1.1', 'read b0', 'read b1']);
    // b1 fails (its call 0 refused, its call 1 answered): the window closes.
    h.fail('b1.0', new Error('AccessDenied'));
    h.answer('b1.1');
    await turn();
    expect(h.calls.closed).toBe(true);
    // b0, read before it, still has its calls under way: the run has not settled.
    expect(settled).toBe(false);
    h.answer('b0.0');
    h.answer('b0.1');
    await turn();
    // b0 answered: it is taken, and the run waits for its take to end before it rejects.
    expect(h.log).toContain('take b0 [b0.0,b0.1]');
    expect(settled).toBe(false);
    h.endTake(0);
    await expect(run).rejects.toThrow('AccessDenied');
    expect(h.log.some((l) => l.startsWith('take b1'))).toBe(false);
    expect(h.log.filter((l) => l.startsWith('read'))).toEqual(['read b0', 'read b1']);
    expect(h.calls.calls).toBe(0);
  });
});
