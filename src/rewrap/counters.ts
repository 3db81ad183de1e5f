/** A tenant whose row did not decrypt (under either KEK), or that a step failed for, and why. */
export interface TenantFailure {
  tenantId: string;
  reason: string;
}

/**
 * What a rewrap did, in the terms of the `rotate-kek` CLI it replaces: rewrapped = "Migrated",
 * alreadyOnTarget = "Already done", skipped = "Skipped" (on a third KEK, or no value), failed = unreadable.
 */
export interface RewrapCounters {
  rewrapped: number;
  /** Rows labelled with the old KEK whose value was already under the new one: their label was corrected. */
  relabelled: number;
  alreadyOnTarget: number;
  skipped: number;
  /** Compare-and-swap races lost to a live writer (each retry that lost counts). */
  casConflicts: number;
  /** Rows still contended after the retries, left for a later pass. */
  contended: number;
  failed: number;
  /** Calls made to a remote key store (AWS KMS ReEncrypt), by this attempt's batches; absent for local keys. */
  keyStoreRequests?: number;
}

/** Every counter's name, for schemas that list them (the admin API's): the compiler refuses a list missing one. */
export const COUNTER_NAMES = [
  'rewrapped',
  'relabelled',
  'alreadyOnTarget',
  'skipped',
  'casConflicts',
  'contended',
  'failed',
  'keyStoreRequests',
] as const satisfies readonly (keyof RewrapCounters)[];
const everyCounterNamed: Exclude<keyof RewrapCounters, (typeof COUNTER_NAMES)[number]> extends never ? true : never =
  true;
void everyCounterNamed;

export const emptyCounters = (): RewrapCounters => ({
  rewrapped: 0,
  relabelled: 0,
  alreadyOnTarget: 0,
  skipped: 0,
  casConflicts: 0,
  contended: 0,
  failed: 0,
});

/** Sums two sets of counters; a field missing from either (counters recorded before it existed) counts as 0. */
export function addCounters(a: RewrapCounters, b: RewrapCounters): RewrapCounters {
  const sum = (key: keyof RewrapCounters) => (a[key] ?? 0) + (b[key] ?? 0);
  return {
    rewrapped: sum('rewrapped'),
    relabelled: sum('relabelled'),
    alreadyOnTarget: sum('alreadyOnTarget'),
    skipped: sum('skipped'),
    casConflicts: sum('casConflicts'),
    contended: sum('contended'),
    failed: sum('failed'),
    // Only where a remote store was called: counters of local keys keep the shape they always had.
    ...((a.keyStoreRequests !== undefined || b.keyStoreRequests !== undefined) && {
      keyStoreRequests: sum('keyStoreRequests'),
    }),
  };
}
