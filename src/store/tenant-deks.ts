import type { Pool } from 'pg';
import { BUILTIN_TARGET } from '../targets/builtin';
import { KekNotWritableError } from '../errors';

export interface StoredDek {
  tenantId: string;
  kekId: string;
  wrappedDek: Buffer;
  /** Incremented by every write: the compare-and-swap token. */
  version: bigint;
}

interface DekRow {
  tenant_id: string;
  kek_id: string;
  wrapped_dek: Buffer;
  version: string;
}

const toStored = (row: DekRow): StoredDek => ({
  tenantId: row.tenant_id,
  kekId: row.kek_id,
  wrappedDek: row.wrapped_dek,
  version: BigInt(row.version),
});

export interface KekStatus {
  currentKekId: string | null;
  /** Number of DEKs wrapped by each KEK id. */
  dekCounts: Record<string, number>;
  /** DEKs on any KEK other than the current one: what a rotation still has to rewrap. */
  staleCounts: Record<string, number>;
}

/** Tenant DEK rows. Every write is a compare-and-swap on `version`. */
export class TenantDekStore {
  constructor(private readonly db: Pool) {}

  async find(tenantId: string): Promise<StoredDek | undefined> {
    const { rows } = await this.db.query<DekRow>(
      'SELECT tenant_id, kek_id, wrapped_dek, version FROM rekey.tenant_deks WHERE tenant_id = $1',
      [tenantId],
    );
    return rows[0] && toStored(rows[0]);
  }

  /**
   * Inserts a tenant's first DEK; false if another writer created one first. KekNotWritableError when the database
   * refuses `kekId` (not active: promoted away or retired since the caller read it).
   */
  async insert(tenantId: string, kekId: string, wrappedDek: Buffer): Promise<boolean> {
    const { rowCount } = await refusedAsError(kekId, () =>
      this.db.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING`,
        [tenantId, kekId, wrappedDek],
      ),
    );
    return rowCount === 1;
  }

  /**
   * Replaces a DEK only if its version is still `expectedVersion`; false when another writer got there first.
   * KekNotWritableError when the database refuses `kekId`.
   */
  async compareAndSwap(tenantId: string, expectedVersion: bigint, kekId: string, wrappedDek: Buffer): Promise<boolean> {
    const { rowCount } = await refusedAsError(kekId, () =>
      this.db.query(
        `UPDATE rekey.tenant_deks SET kek_id = $3, wrapped_dek = $4, version = version + 1, updated_at = now()
         WHERE tenant_id = $1 AND version = $2`,
        [tenantId, expectedVersion.toString(), kekId, wrappedDek],
      ),
    );
    return rowCount === 1;
  }

  /** Number of DEKs on `kekId` (index-only on tenant_deks_by_kek). */
  async countOnKek(kekId: string): Promise<number> {
    const { rows } = await this.db.query<{ n: string }>(
      'SELECT count(*) AS n FROM rekey.tenant_deks WHERE kek_id = $1',
      [kekId],
    );
    return Number(rows[0]?.n ?? 0);
  }

  /** Up to `limit` tenant ids still on `kekId`, for reports. */
  async tenantsOnKek(kekId: string, limit: number): Promise<string[]> {
    const { rows } = await this.db.query<{ tenant_id: string }>(
      'SELECT tenant_id FROM rekey.tenant_deks WHERE kek_id = $1 ORDER BY tenant_id LIMIT $2',
      [kekId, limit],
    );
    return rows.map((r) => r.tenant_id);
  }

  async kekStatus(): Promise<KekStatus> {
    const [counts, current] = await Promise.all([
      this.db.query<{ kek_id: string; n: string }>(
        'SELECT kek_id, count(*) AS n FROM rekey.tenant_deks GROUP BY kek_id ORDER BY kek_id',
      ),
      this.db.query<{ kek_id: string }>(`SELECT kek_id FROM rekey.keks WHERE target = $1 AND state = 'active'`, [
        BUILTIN_TARGET,
      ]),
    ]);
    const currentKekId = current.rows[0]?.kek_id ?? null;
    const dekCounts: Record<string, number> = {};
    const staleCounts: Record<string, number> = {};
    for (const row of counts.rows) {
      dekCounts[row.kek_id] = Number(row.n);
      if (row.kek_id !== currentKekId) staleCounts[row.kek_id] = Number(row.n);
    }
    return { currentKekId, dekCounts, staleCounts };
  }
}

/** The SQLSTATE the kek-may-wrap trigger raises; its DETAIL is the KEK's state (absent: not in the registry). */
export const KEK_MAY_NOT_WRAP = 'RK001';

/** Runs a write of a wrapped DEK; the database's refusal of its KEK becomes KekNotWritableError. */
export async function refusedAsError<T>(kekId: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    const pgError = err as { code?: string; detail?: string };
    if (pgError.code === KEK_MAY_NOT_WRAP) throw new KekNotWritableError(BUILTIN_TARGET, kekId, pgError.detail ?? null);
    throw err;
  }
}
