// Finding 2 of "Safety": retire did not stop writers. The database now refuses a DEK written under a KEK that may
// not wrap, whoever writes it, and the check serializes with retirement.
import { describe, expect, it } from 'vitest';
import type { Pool, PoolClient } from 'pg';
import { createActivities } from '../../src/activities';
import { KekNotWritableError, RetireRefusedError } from '../../src/errors';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TenantCrypto } from '../../src/tenant-crypto';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { wrapUnder, fingerprintIn } from '../helpers/store-keys';

const keys = testKeys(['v1', 'v2', 'v3'], 'v1');
const WRAPPED = Buffer.alloc(60, 7);

async function withDatabase(fn: (db: TestDatabase, registry: KekRegistry) => Promise<void>): Promise<void> {
  const db = await createTestDatabase();
  try {
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', await fingerprintIn(keys, 'v1'));
    await fn(db, registry);
  } finally {
    await db.drop();
  }
}

async function insertRaw(db: Pool | PoolClient, tenantId: string, kekId: string): Promise<void> {
  await db.query('INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, $2, $3)', [
    tenantId,
    kekId,
    WRAPPED,
  ]);
}

/** Resolves once some backend of this database waits for a lock: the statement under test is blocked. */
async function blockedOnLock(db: Pool): Promise<void> {
  await eventually(
    'a statement waiting for the registry lock',
    async () => {
      const { rows } = await db.query<{ n: string }>(
        `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
      );
      return Number(rows[0]?.n) > 0;
    },
    { every: 20 },
  );
}

async function registryInState(registry: KekRegistry): Promise<void> {
  // v1 decrypt-only, v2 active, v3 provisioned: a rotation v1 → v2 after promotion, with a next KEK provisioned.
  await registry.register('v2', await fingerprintIn(keys, 'v2'));
  await registry.promote('v1', 'v2');
  await registry.register('v3', await fingerprintIn(keys, 'v3'));
}

describe('Finding 2: the database refuses a DEK written under a KEK that may not wrap', () => {
  it('a write names an active KEK; decrypt-only, retired, provisioned and unknown KEKs are refused, and nothing is written', () =>
    withDatabase(async (db, registry) => {
      await insertRaw(db.pool, 'before', 'v1');
      await registryInState(registry);
      await insertRaw(db.pool, 'on-active', 'v2');
      for (const kekId of ['v1', 'v3', 'v9']) {
        const refused = await insertRaw(db.pool, `on-${kekId}`, kekId).then(
          () => undefined,
          (err: unknown) => err as { code: string; message: string },
        );
        expect(refused?.code).toBe('RK001');
        expect(refused?.message).toContain(`KEK '${kekId}' may not wrap a DEK`);
      }
      // A multi-row statement with one refused row writes none of them.
      await expect(
        db.pool.query(
          `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ('ok', 'v2', $1), ('bad', 'v1', $1)`,
          [WRAPPED],
        ),
      ).rejects.toMatchObject({ code: 'RK001' });
      // Moving a row onto a KEK that may not wrap is refused; an update that leaves the wrapped DEK alone is not.
      await expect(
        db.pool.query(`UPDATE rekey.tenant_deks SET kek_id = 'v3' WHERE tenant_id = 'on-active'`),
      ).rejects.toMatchObject({ code: 'RK001' });
      await db.pool.query(`UPDATE rekey.tenant_deks SET updated_at = now() WHERE tenant_id = 'before'`);
      const { rows } = await db.pool.query<{ tenant_id: string; kek_id: string }>(
        'SELECT tenant_id, kek_id FROM rekey.tenant_deks ORDER BY tenant_id',
      );
      expect(rows).toEqual([
        { tenant_id: 'before', kek_id: 'v1' },
        { tenant_id: 'on-active', kek_id: 'v2' },
      ]);
      // rekey's store says which KEK and why.
      await expect(new TenantDekStore(db.pool).insert('t', 'v1', WRAPPED)).rejects.toEqual(
        new KekNotWritableError(BUILTIN_TARGET, 'v1', 'decrypt_only'),
      );
    }));

  it('a provisioned KEK wraps only for a session that says so (the canary)', () =>
    withDatabase(async (db, registry) => {
      await registryInState(registry);
      const client = await db.pool.connect();
      try {
        await expect(insertRaw(client, 'canary', 'v3')).rejects.toMatchObject({ code: 'RK001' });
        await client.query(`SELECT set_config('rekey.wrap_provisioned', 'v3', false)`);
        await insertRaw(client, 'canary', 'v3');
        await expect(insertRaw(client, 'not-v1', 'v1')).rejects.toMatchObject({ code: 'RK001' });
      } finally {
        client.release(true);
      }
    }));

  it('a write that stalled across a retirement waits for it and is then refused', () =>
    withDatabase(async (db, registry) => {
      await registry.register('v2', await fingerprintIn(keys, 'v2'));
      await registry.promote('v1', 'v2');
      // Retirement holds v1's registry row, as retireKek does, while a stalled request's insert under v1 arrives.
      const retire = await db.pool.connect();
      try {
        await retire.query('BEGIN');
        await retire.query(`SELECT 1 FROM rekey.keks WHERE target = 'rekey' AND kek_id = 'v1' FOR UPDATE`);
        const late = insertRaw(db.pool, 'late', 'v1');
        late.catch(() => undefined);
        await blockedOnLock(db.pool);
        await registry.transition('v1', 'retired', retire);
        await retire.query('COMMIT');
        await expect(late).rejects.toThrow("KEK 'v1' may not wrap a DEK: it is retired");
      } finally {
        retire.release();
      }
      expect(await new TenantDekStore(db.pool).countOnKek('v1')).toBe(0);
    }));

  it('a write that got in first makes the retirement wait, count it, and refuse', () =>
    withDatabase(async (db, registry) => {
      const writer = await db.pool.connect();
      try {
        await writer.query('BEGIN');
        // Still active: the insert is allowed, and its transaction holds v1's registry row shared until it ends.
        await writer.query('INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, $2, $3)', [
          'early',
          'v1',
          await wrapUnder(keys, 'v1', 'early', Buffer.alloc(32, 1)),
        ]);
        await registry.register('v2', await fingerprintIn(keys, 'v2'));
        const promoted = registry.promote('v1', 'v2');
        await blockedOnLock(db.pool);
        await writer.query('COMMIT');
        await promoted;
      } finally {
        writer.release();
      }
      const activities = createActivities({ db: db.pool, keys });
      await expect(activities.retireKek({ from: 'v1' })).rejects.toBeInstanceOf(RetireRefusedError);
      expect((await registry.get('v1'))?.state).toBe('decrypt_only');
    }));

  it('an application instance whose cached current KEK was retired meanwhile re-reads the registry and wraps with the new one', () =>
    withDatabase(async (db, registry) => {
      const warnings: string[] = [];
      // A registry TTL of an hour: this instance believes 'v1' is current for the whole test.
      const app = new TenantCrypto({ db: db.pool, keys, registryTtlMs: 3_600_000, warn: (m) => warnings.push(m) });
      await app.start();
      try {
        await registry.register('v2', await fingerprintIn(keys, 'v2'));
        await registry.promote('v1', 'v2');
        await registry.transition('v1', 'retired');

        // Before the fix this DEK went under the retired 'v1': unreadable once v1's key is removed.
        const ciphertext = await app.encrypt('newcomer', 'secret');
        expect((await new TenantDekStore(db.pool).find('newcomer'))?.kekId).toBe('v2');
        expect((await app.decrypt('newcomer', ciphertext)).toString()).toBe('secret');
        expect(warnings).toContainEqual(expect.stringContaining("refused a DEK wrapped with 'v1' (retired)"));
        expect(await new TenantDekStore(db.pool).countOnKek('v1')).toBe(0);
      } finally {
        await app.stop();
      }
    }));
});
