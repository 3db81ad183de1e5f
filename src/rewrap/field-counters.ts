// The counts of `rekey migrate-dek`, pure: the workflow adds them up, the store persists them.

export interface FieldCounters {
  migrated: number;
  /** Values already in the current form when the part started ("already v2"). */
  alreadyCurrent: number;
  /** Legacy values that did not decrypt: reported, never written. */
  unreadable: number;
  /** Values a live writer replaced between read and write: left to the writer. */
  casConflicts: number;
  /** DEKs this migration wrote for tenants that had none. */
  deksProvisioned: number;
}

export function emptyFieldCounters(): FieldCounters {
  return { migrated: 0, alreadyCurrent: 0, unreadable: 0, casConflicts: 0, deksProvisioned: 0 };
}

export function addFieldCounters(a: FieldCounters, b: FieldCounters): FieldCounters {
  return {
    migrated: a.migrated + b.migrated,
    alreadyCurrent: a.alreadyCurrent + b.alreadyCurrent,
    unreadable: a.unreadable + b.unreadable,
    casConflicts: a.casConflicts + b.casConflicts,
    deksProvisioned: a.deksProvisioned + b.deksProvisioned,
  };
}
