// Adversary of the retire proof's pre-pass mark (proofs5: TargetStore.changeMark is pg_snapshot_xmin of the current
// snapshot, and under the registry row's lock the step proves the rows whose xmin is at or after it). The snapshot's
// xmin is the oldest transaction id still running anywhere in the cluster, in any database: one writer left open
// elsewhere (another application's batch job, an idle-in-transaction session, another keyspace's database on the same
// server) drags the mark back before every row of the table, and the step proves the whole table again under the lock,
// holding the registry row (and every write of the active KEK's rows that waits on it) as long as before the pre-pass
// existed. Not a row left unproved (the mark errs towards proving more), but the lock the pre-pass exists to shorten
// is not shortened, and test/targets/retire-pre-pass's "under the lock none" fails whenever another test on the shared
// server holds a transaction. Against PostgreSQL, through the worker's activities.
import { randomBytes } from 'node:crypto';
import type { PoolClient } from 'pg';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { inlineRowCrypto, type RowCrypto } from '../../src/crypto/row-crypto';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createTestDatabase, useTestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { createTestKeys } from '../helpers/keys';
import { wrapRekeyDek } from '../helpers/rekey-format';

describe("adversary: the retire step's pre-pass while a transaction of another database stays open", () => {
  const db = useTestDatabase();

  it('under the registry row lock the step proves only the rows written since its pre-pass began (here none), whatever another database of the server has open', async () => {
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v2');
    const v2 = Buffer.from(env.TEST_KEK_v2!, 'base64url');
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', kekFingerprint(Buffer.from(env.TEST_KEK_v1!, 'base64url')));
    await registry.register('v2', kekFingerprint(v2));
    await registry.promote('v1', 'v2');
    // Another database on the same server: a writer whose transaction began before the rows were written (and before
    // the step) and is still open when the step runs.
    const other = await createTestDatabase({ migrate: false });
    const elsewhere = await other.pool.connect();
    await elsewhere.query('BEGIN');
    await elsewhere.query('CREATE TABLE busy (n int)');
    await elsewhere.query('SELECT pg_current_xact_id()');
    const count = 500;
    for (let i = 0; i < count; i++) {
      await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`, [
        `tenant-${String(i).padStart(4, '0')}`,
        wrapRekeyDek(v2, 'v2', `tenant-${String(i).padStart(4, '0')}`, randomBytes(32)),
      ]);
    }
    // Every row the step opens, as the crypto sees them.
    let checked = 0;
    const crypto: RowCrypto = {
      ...inlineRowCrypto,
      async check(codec, kek, rows) {
        checked += rows.length;
        return inlineRowCrypto.check(codec, kek, rows);
      },
    };
    const activities = createActivities({ db: db.pool, keys: provider, crypto });

    const holder: PoolClient = await db.pool.connect();
    try {
      // The test holds v1's registry row: the step's pre-pass runs, then the step waits for the lock.
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM rekey.keks WHERE target = 'rekey' AND kek_id = 'v1' FOR UPDATE`);
      let settled = false;
      const retire = activities.retireKek({ from: 'v1', restoreWindowMs: 86_400_000 }).finally(() => {
        settled = true;
      });
      await eventually(
        'the retire step waiting for the registry row, its pre-pass done',
        async () => {
          const { rows } = await db.pool.query<{ n: string }>(
            `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))`,
            [(holder as unknown as { processID: number }).processID],
          );
          return Number(rows[0]!.n) > 0;
        },
        { failIf: () => (settled ? 'the retire step ended without waiting for the lock' : undefined) },
      );
      const beforeLock = checked;
      expect(beforeLock, 'the pre-pass opened every row').toBeGreaterThanOrEqual(count);
      await holder.query('COMMIT');
      await retire;
      expect((await registry.require('v1')).state).toBe('retired');
      // Nothing was written since the pre-pass began: under the lock, no row is opened again.
      expect(checked - beforeLock).toBe(0);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
      await elsewhere.query('ROLLBACK').catch(() => undefined);
      elsewhere.release();
      await other.drop();
      provider.close();
    }
  });
});
