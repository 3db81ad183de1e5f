// The retire and destroy proofs' pre-pass: every row of the target proved outside the KEK's registry row lock, in
// batches whose checkpoint rides the step's heartbeat, so that the step under the lock proves only the rows written
// since the pre-pass began (TargetStore.changeMark), and a retried attempt goes on from where the last one stopped.
import type { Pool } from 'pg';
import type { RowCrypto } from '../crypto/row-crypto';
import type { ProvedUnder, TargetStore } from '../store/target-store';
import { emptyProof, type LabelProof } from '../rotation/label-proof';
import { proveLabelled, proveRowsNotLabelledFrom, type ProofKeys } from './still-on';

/**
 * Where a pre-pass stands, carried in the retire or destroy step's heartbeat details (no key material: ids, counts
 * and the first few rows that need the KEK, with why).
 */
export interface PrePassCheckpoint {
  kind: 'proof-pre-pass';
  /** The KEK the step retires or destroys: a checkpoint of another KEK's step is not taken up. */
  kekId: string;
  /** The target's change mark when the pre-pass began (TargetStore.changeMark); absent at stage 'whole'. */
  since?: string;
  /**
   * The relations the scan read when the pre-pass began (TargetStore.scanScope): the locked step reads only the rows
   * written since `since` when they are still the same, and every row otherwise. Absent in a checkpoint of an older
   * build: every row.
   */
  scope?: string;
  /**
   * 'labelled': the rows labelled `kekId` (relabelled where a usable KEK opens them); 'others': the rows labelled
   * otherwise, NULL included (reads only); 'done': the locked step proves the rows written since `since`; 'whole':
   * the locked step proves every row, as without a pre-pass (`why` says why).
   */
  stage: 'labelled' | 'others' | 'done' | 'whole';
  /** The last id proved in the stage under way. */
  cursor: string;
  labelled: LabelProof;
  /** The rows labelled otherwise: `tried` counts the rows read. */
  others: LabelProof;
  why?: string;
}

export interface PrePassOptions {
  batchSize: number;
  /** Counts the relabelled rows (in the statement that writes them), as the locked step does into the same row. */
  progressKey?: string;
  labelDefault?: string;
  /** An earlier attempt's last checkpoint. */
  resumeFrom?: PrePassCheckpoint;
  /**
   * Rows labelled with the active KEK that verify proved under it and the database shows unchanged since (KMS and
   * Transit keyspaces: src/rotation/verified-mark.ts): the stage 'others' leaves them out.
   */
  provedUnder?: ProvedUnder;
  /** After every batch and every change of stage (heartbeat here). */
  onCheckpoint(checkpoint: PrePassCheckpoint): void;
  /** What the change mark says of itself when it is coarser than it could be (TargetStore.changeMark's note). */
  onMarkNote?(note: string): void;
}

/** A heartbeat's details as a pre-pass checkpoint of `kekId`'s step, or undefined (none, or another shape). */
export function prePassCheckpointOf(details: unknown, kekId: string): PrePassCheckpoint | undefined {
  if (typeof details !== 'object' || details === null) return undefined;
  const checkpoint = details as Partial<PrePassCheckpoint>;
  if (checkpoint.kind !== 'proof-pre-pass' || checkpoint.kekId !== kekId) return undefined;
  if (checkpoint.stage !== 'whole' && !/^\d+$/.test(checkpoint.since ?? '')) return undefined;
  return checkpoint as PrePassCheckpoint;
}

/**
 * Runs (or goes on with) the pre-pass of the rows that may need `keys.label`: the rows labelled with it, then every
 * other row with a value. Rows labelled with it that open under a usable KEK are sealed again under the active KEK
 * and relabelled (compare-and-swap, counted once in `progressKey`); the others are read only. A row that needs the
 * KEK ends the pre-pass at stage 'whole': the locked step then proves every row, and refuses exactly as it did
 * without a pre-pass. A target whose changes cannot be told apart ends it there at once, with why.
 */
export async function runPrePass(
  store: TargetStore,
  db: Pool,
  crypto: RowCrypto,
  keys: ProofKeys,
  options: PrePassOptions,
): Promise<PrePassCheckpoint> {
  let checkpoint = options.resumeFrom;
  const report = (next: PrePassCheckpoint) => {
    checkpoint = next;
    options.onCheckpoint(next);
    return next;
  };
  if (checkpoint === undefined) {
    const base = { kind: 'proof-pre-pass' as const, kekId: keys.label, cursor: '' };
    // The scope before the mark and before any row is read: a table attached after this shows under the lock.
    const scope = await store.scanScope();
    const mark = await store.changeMark();
    if ('why' in mark) {
      return report({ ...base, stage: 'whole', labelled: emptyProof(), others: emptyProof(), why: mark.why });
    }
    if (mark.note !== undefined) options.onMarkNote?.(mark.note);
    report({ ...base, since: mark.mark, scope, stage: 'labelled', labelled: emptyProof(), others: emptyProof() });
  }
  let current = checkpoint!;
  if (current.stage === 'labelled') {
    const proved = await proveLabelled(store, db, crypto, keys, {
      after: '',
      batchSize: options.batchSize,
      ...(options.progressKey !== undefined && { progressKey: options.progressKey }),
      resumeFrom: { cursor: current.cursor, proof: current.labelled },
      onBatch: ({ cursor, proof }) => report({ ...current, cursor, labelled: proof }),
    });
    current = report(
      proved.proof.needed > 0
        ? { ...current, stage: 'whole', labelled: proved.proof, why: 'a row labelled with the KEK needs it' }
        : { ...current, stage: 'others', cursor: '', labelled: proved.proof },
    );
  }
  if (current.stage === 'others') {
    const from = current;
    const proved = await proveRowsNotLabelledFrom(store, db, crypto, keys, {
      batchSize: options.batchSize,
      ...(options.labelDefault !== undefined && { labelDefault: options.labelDefault }),
      after: from.cursor,
      resumeFrom: from.others,
      ...(options.provedUnder !== undefined && { provedUnder: options.provedUnder }),
      stopWhenNeeded: true,
      onBatch: ({ cursor, proof }) => report({ ...from, cursor, others: proof }),
    });
    current = report(
      proved.proof.needed > 0
        ? {
            ...from,
            stage: 'whole',
            cursor: proved.cursor,
            others: proved.proof,
            why: 'a row labelled otherwise needs the KEK',
          }
        : { ...from, stage: 'done', cursor: proved.cursor, others: proved.proof },
    );
  }
  return current;
}
