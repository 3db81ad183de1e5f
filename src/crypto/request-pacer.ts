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

/** Runs `work` on every item, at most `concurrency` at a time, each started on the rate schedule; results in order. */
export class RequestPacer {
  private readonly schedule: RateSchedule;

  constructor(readonly limits: PacerLimits) {
    if (!Number.isInteger(limits.concurrency) || limits.concurrency < 1) {
      throw new RangeError(`concurrency must be ≥ 1, got ${limits.concurrency}`);
    }
    this.schedule = new RateSchedule(limits.ratePerSecond);
  }

  async map<T, R>(items: readonly T[], work: (item: T, index: number) => Promise<R>): Promise<R[]> {
    const results = new Array<R>(items.length);
    let next = 0;
    let failed = false;
    const lane = async () => {
      while (!failed && next < items.length) {
        const index = next++;
        const wait = this.schedule.delay(Date.now());
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        // Another lane failed while this one waited its turn: the batch has failed, and what `work` uses may be gone.
        if (failed) return;
        try {
          results[index] = await work(items[index]!, index);
        } catch (err) {
          failed = true; // the other lanes stop taking items; the first error is the batch's
          throw err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.limits.concurrency, items.length) }, lane));
    return results;
  }
}
