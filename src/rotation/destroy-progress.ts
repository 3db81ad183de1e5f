// Where a retired KEK's destruction stands, as its workflow's `destroyProgress` query answers it, and when a refused
// destruction tries again. Plain data and pure functions: the workflow (src/workflows/destroy-kek.ts) holds them.

/** The destruction's state: what it waits for, what it found, and what the operator must do. */
export interface DestroyProgress {
  target: string;
  kekId: string;
  /**
   * waiting: for the restore window to end (by the database's clock); proving: trying the rows still labelled with
   * the KEK; refused: rows may need the KEK (`detail` says what to do; it tries again at `nextAttemptAt`); kept: the
   * KEK was restored; destroyed.
   */
  state: 'waiting' | 'proving' | 'refused' | 'kept' | 'destroyed';
  detail: string;
  /** Destroy steps taken (each proves the rows under the KEK's registry row's lock). */
  attempts: number;
  /** Of those, refused because rows may need the KEK. */
  refusals: number;
  /** Rows labelled with the KEK that opened under a usable KEK and were relabelled (outside and under the lock). */
  relabelled: number;
  /** When the next step runs (ISO 8601), while waiting or refused. */
  nextAttemptAt?: string;
  /** Refused: how many rows may need the KEK, and the first few. */
  needed?: number;
  neededRows?: { tenantId: string; reason: string }[];
}

export function initialDestroyProgress(target: string, kekId: string, windowEndsAt: number): DestroyProgress {
  return {
    target,
    kekId,
    state: 'waiting',
    detail: 'waiting for the restore window to end',
    attempts: 0,
    refusals: 0,
    relabelled: 0,
    nextAttemptAt: new Date(windowEndsAt).toISOString(),
  };
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/**
 * How long a refused destruction waits, keeping the KEK restorable, before it proves the rows again: an hour after
 * the first refusal, doubling, never longer than a day.
 */
export function destroyRetryDelayMs(refusals: number): number {
  return Math.min(HOUR_MS * 2 ** Math.min(Math.max(refusals - 1, 0), 10), DAY_MS);
}
