/**
 * What a rewrap did, in the terms of the `rotate-kek` CLI it replaces: rewrapped = "Migrated",
 * alreadyOnTarget = "Already done", skipped = "Skipped" (on a third KEK), failed = unreadable DEKs.
 */
export interface RewrapCounters {
  rewrapped: number;
  alreadyOnTarget: number;
  skipped: number;
  /** Compare-and-swap races lost to a live writer (each retry that lost counts). */
  casConflicts: number;
  /** Rows still contended after the retries, left for a later pass. */
  contended: number;
  failed: number;
}

export const emptyCounters = (): RewrapCounters => ({
  rewrapped: 0,
  alreadyOnTarget: 0,
  skipped: 0,
  casConflicts: 0,
  contended: 0,
  failed: 0,
});

export function addCounters(a: RewrapCounters, b: RewrapCounters): RewrapCounters {
  return {
    rewrapped: a.rewrapped + b.rewrapped,
    alreadyOnTarget: a.alreadyOnTarget + b.alreadyOnTarget,
    skipped: a.skipped + b.skipped,
    casConflicts: a.casConflicts + b.casConflicts,
    contended: a.contended + b.contended,
    failed: a.failed + b.failed,
  };
}
