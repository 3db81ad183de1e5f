import type { Pool, PoolClient } from 'pg';
import type { ResolvedKek } from '../keys/kek-resolver';
import type { TargetStore } from '../store/target-store';
import type { TenantFailure } from './rewrap-slice';
import { UnreadableValueError } from '../errors';

/** Rows labelled with a KEK, by what their value proves: a label can lie. */
export interface LabelledRows {
  /** Rows whose value is under `from`: they still need it. */
  onFrom: number;
  /** Rows whose value is under `to` although their label says `from` (Mycelium's lazily provisioned DEKs). */
  mislabelled: number;
  /** Rows that open under neither: they keep `from` from retiring. */
  unreadable: TenantFailure[];
}

const BATCH = 2_000;
const LISTED = 20;

/**
 * Classifies every row labelled `from` by trial decryption. Whether `from` may retire depends on which key the values
 * are under, not on their labels: a row labelled `from` that opens under `to` does not need `from`.
 */
export async function rowsLabelled(
  store: TargetStore,
  client: Pool | PoolClient,
  from: ResolvedKek,
  to: ResolvedKek,
  onlyId?: string,
): Promise<LabelledRows> {
  const result: LabelledRows = { onFrom: 0, mislabelled: 0, unreadable: [] };
  let after = '';
  for (;;) {
    const rows = await store.readBatch(
      client,
      { kind: 'label', kekId: from.kekId },
      { after, until: null },
      BATCH,
      onlyId,
    );
    if (rows.length === 0) break;
    for (const row of rows) {
      if (opens(store, from, row)) result.onFrom += 1;
      else if (opens(store, to, row)) result.mislabelled += 1;
      else if (result.unreadable.length < LISTED) {
        result.unreadable.push({ tenantId: row.$id, reason: reasonOf(store, from, row) });
        result.onFrom += 1;
      } else result.onFrom += 1;
    }
    if (onlyId !== undefined) break;
    after = rows[rows.length - 1]!.$id;
  }
  return result;
}

function opens(store: TargetStore, kek: ResolvedKek, row: Parameters<TargetStore['codec']['open']>[1]): boolean {
  try {
    store.codec.open(kek.key, row, kek.kekId).fill(0);
    return true;
  } catch (err) {
    if (err instanceof UnreadableValueError) return false;
    throw err;
  }
}

function reasonOf(store: TargetStore, kek: ResolvedKek, row: Parameters<TargetStore['codec']['open']>[1]): string {
  try {
    store.codec.open(kek.key, row, kek.kekId).fill(0);
    return 'opens';
  } catch (err) {
    return err instanceof UnreadableValueError ? err.reason : String(err);
  }
}
