// Bounded concurrency and a steady request rate for calls to a remote key store (AWS KMS), whose quota the rotation
// shares with the application: a rotation must never take all of it.

export interface PacerLimits {
  /** Calls in flight at once. */
  concurrency: number;
  /** Calls started per second, at most (0: no limit but the concurrency). */
  ratePerSecond: number;
}

/**
 * When each call may start: slots `1/rate` apart, never in the past, so that a burst after an idle spell is not let
 * through all at once. Pure, with the clock given, so its arithmetic is tested without waiting.
 */
export class RateSchedule {
  private next = 0;

  constructor(private readonly ratePerSecond: number) {}

  /** How long the call asked for at `now` (ms) waits before it starts. */
  delay(now: number): number {
    if (this.ratePerSecond <= 0) return 0;
    const start = Math.max(now, this.next);
    this.next = start + 1000 / this.ratePerSecond;
    return start - now;
  }
}

/**
 * The slots of calls in flight that several batches share (a slice's batches whose calls run at once): a call takes a
 * slot before it starts and gives it back when it has answered, first come first served. Closed, it starts no call
 * again: a call waiting for a slot is told no, the calls in flight go on to their answer.
 */
export class CallWindow {
  private inFlight = 0;
  private closedNow = false;
  private readonly waiting: ((slot: boolean) => void)[] = [];
  private slackWaiters: (() => void)[] = [];

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`a call window holds ≥ 1 call, got ${size}`);
  }

  get closed(): boolean {
    return this.closedNow;
  }

  /** Calls holding a slot now. */
  get calls(): number {
    return this.inFlight;
  }

  /** True when a slot is free and no call waits for one: more calls could start at once. */
  get hasSlack(): boolean {
    return !this.closedNow && this.inFlight < this.size && this.waiting.length === 0;
  }

  /** A slot (taken at once when one is free), or false once the window is closed. */
  acquire(): Promise<boolean> {
    if (this.closedNow) return Promise.resolve(false);
    if (this.inFlight < this.size && this.waiting.length === 0) {
      this.inFlight++;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Gives a slot back: to the call waiting longest, else free. */
  release(): void {
    const next = this.closedNow ? undefined : this.waiting.shift();
    if (next) {
      next(true);
      return;
    }
    this.inFlight--;
    if (this.hasSlack) for (const resolve of this.slackWaiters.splice(0)) resolve();
  }

  /** Resolves when a slot is free and no call waits for one. */
  slack(): Promise<void> {
    if (this.hasSlack) return Promise.resolve();
    return new Promise((resolve) => this.slackWaiters.push(resolve));
  }

  /** No call starts after this; the calls waiting for a slot are told no. */
  close(): void {
    this.closedNow = true;
    for (const resolve of this.waiting.splice(0)) resolve(false);
  }
}

/**
 * How many of a slice's batches may have calls under way at once (RowCrypto.pipeline): while a throttled call backs
 * off (seconds, the SDK's backoff), the calls of up to this many batches after it go on. Bounds the rows a slice
 * holds read and not yet written.
 */
export const BATCHES_AHEAD = 8;

/** A batch some of whose calls never started: its window was closed first (a pause or an abort). Not written. */
export class CallsStoppedError extends Error {
  constructor(
    readonly done: number,
    readonly of: number,
  ) {
    super(`the window closed with ${of - done} of ${of} calls not started`);
    this.name = 'CallsStoppedError';
  }
}

/** Runs `work` on every item, at most `concurrency` at a time, each started on the rate schedule; results in order. */
export class RequestPacer {
  private readonly schedule: RateSchedule;

  constructor(readonly limits: PacerLimits) {
    if (!Number.isInteger(limits.concurrency) || limits.concurrency < 1) {
      throw new RangeError(`concurrency must be ≥ 1, got ${limits.concurrency}`);
    }
    this.schedule = new RateSchedule(limits.ratePerSecond);
  }

  /** A window of `concurrency` calls for batches that run their calls at once (a slice's, RowCrypto.pipeline). */
  window(): CallWindow {
    return new CallWindow(this.limits.concurrency);
  }

  /**
   * Each call takes a slot of a window of its own (this batch's calls alone; mapIn shares one). The first error
   * fails the batch: no more of its calls start, and it rejects once those in flight have answered. A window closed
   * before every call started rejects with CallsStoppedError (those in flight answered first).
   */
  map<T, R>(items: readonly T[], work: (item: T, index: number) => Promise<R>): Promise<R[]> {
    return this.mapIn(undefined, items, work);
  }

  /** `map` in the slots of `window` (a window of its own when undefined). */
  async mapIn<T, R>(
    window: CallWindow | undefined,
    items: readonly T[],
    work: (item: T, index: number) => Promise<R>,
  ): Promise<R[]> {
    const slots = window ?? this.window();
    const results = new Array<R>(items.length);
    let next = 0;
    let done = 0;
    let failure: { error: unknown } | undefined;
    const lane = async () => {
      while (failure === undefined && next < items.length) {
        if (!(await slots.acquire())) return;
        try {
          if (failure !== undefined || next >= items.length) return;
          const index = next++;
          const wait = this.schedule.delay(Date.now());
          if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          // The batch failed, or its window closed, while this call waited its turn: it does not start.
          if (failure !== undefined || slots.closed) return;
          results[index] = await work(items[index]!, index);
          done++;
        } catch (error) {
          failure ??= { error }; // the other lanes stop taking items; the first error is the batch's
        } finally {
          slots.release();
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(slots.size, items.length) }, lane));
    if (failure !== undefined) throw failure.error;
    if (done < items.length) throw new CallsStoppedError(done, items.length);
    return results;
  }
}
