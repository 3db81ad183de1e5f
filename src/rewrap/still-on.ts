import type { Pool, PoolClient } from 'pg';
import type { ResolvedKek } from '../keys/kek-resolver';
import type { TargetStore } from '../store/target-store';
import type { TenantFailure } from './rewrap-slice';
import type { RowCrypto } from '../crypto/row-crypto';

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
  crypto: RowCrypto,
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
    const underFrom = await crypto.check(store.codec, from, rows);
    const notOnFrom = rows.flatMap((row, i) => (underFrom[i] === undefined ? [] : [{ row, reason: underFrom[i] }]));
    const underTo = await crypto.check(
      store.codec,
      to,
      notOnFrom.map(({ row }) => row),
    );
    result.onFrom += rows.length - notOnFrom.length;
    notOnFrom.forEach(({ row, reason }, i) => {
      if (underTo[i] === undefined) {
        result.mislabelled += 1;
        return;
      }
      // Opens under neither: it keeps `from` from retiring, and is named (the first few).
      result.onFrom += 1;
      if (result.unreadable.length < LISTED) result.unreadable.push({ tenantId: row.$id, reason });
    });
    if (onlyId !== undefined) break;
    after = rows[rows.length - 1]!.$id;
  }
  return result;
}
