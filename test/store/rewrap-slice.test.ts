import { describe, expect, it } from 'vitest';
import { dekFingerprints } from '../../src/dev/tenants';
import { sharedRowCrypto, type RowCrypto } from '../../src/crypto/row-crypto';
import { rewrapSlice, type RewrapSliceInput } from '../../src/rewrap/rewrap-slice';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { REKEY_PRESET } from '../../src/targets/presets';
import { TenantCrypto } from '../../src/tenant-crypto';
import { createTestDatabase, seedPast, type TestDatabase } from '../helpers/database';
import { engineFor } from '../../src/dev/engine';
import { testKeys } from '../helpers/keys';
import { within } from '../helpers/temporal';
import { startLiveWriter } from '../helpers/live-writer';
import { fingerprintIn } from '../helpers/store-keys';

const keys = testKeys(['v1', 'v2', 'v3'], 'v1');
const fullRange = {
  after: '',
  until: null,
  batchSize: 500,
  dryRun: false,
} satisfies RewrapSliceInput;

/** Each test gets its own database: the counters must describe exactly the rows it seeded. */
async function withDatabase(fn: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await createTestDatabase();
  try {
    await fn(db);
  } finally {
    await db.drop();
  }
}

async function staleCount(db: TestDatabase, kekId = 'v1'): Promise<number> {
  return new TenantDekStore(db.pool).countOnKek(kekId);
}

describe('rewrapSlice', () => {
  it('rewraps every tenant, leaves every DEK byte-identical and none stale', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 5_000 });
      const before = await dekFingerprints(db.pool, keys);

      const result = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), fullRange);

      expect(result.done).toBe(true);
      expect(result.counters).toEqual({
        rewrapped: 5_000,
        relabelled: 0,
        alreadyOnTarget: 0,
        skipped: 0,
        casConflicts: 0,
        contended: 0,
        failed: 0,
      });
      expect(await staleCount(db)).toBe(0);
      expect(await dekFingerprints(db.pool, keys)).toEqual(before);
      const { rows } = await db.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM rekey.tenant_deks WHERE version = 2`,
      );
      expect(Number(rows[0]?.n)).toBe(5_000);
    }));

  it('tenant data encrypted before a rewrap decrypts after it', () =>
    withDatabase(async (db) => {
      const app = new TenantCrypto({ db: db.pool, keys });
      await app.start();
      const ciphertexts = await Promise.all(['a', 'b', 'c'].map((t) => app.encrypt(t, `secret of ${t}`)));
      await app.stop();

      await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), fullRange);

      const fresh = new TenantCrypto({ db: db.pool, keys });
      await fresh.start();
      const plaintexts = await Promise.all(['a', 'b', 'c'].map((t, i) => fresh.decrypt(t, ciphertexts[i]!)));
      await fresh.stop();
      expect(plaintexts.map(String)).toEqual(['secret of a', 'secret of b', 'secret of c']);
      expect(await staleCount(db)).toBe(0);
    }));

  it('counts DEKs already on the target as already done and those on a third KEK as skipped', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 300, prefix: 'a-' });
      await seedPast(db.pool, { keys, kekId: 'v2', count: 200, prefix: 'b-' });
      await seedPast(db.pool, { keys, kekId: 'v3', count: 100, prefix: 'c-' });
      const result = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), fullRange);
      expect(result.counters).toMatchObject({ rewrapped: 300, alreadyOnTarget: 200, skipped: 100 });
      expect(await staleCount(db, 'v3')).toBe(100);
    }));

  it('a concurrent writer loses no update, and a second pass leaves no stale row', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 4_000 });
      const before = await dekFingerprints(db.pool, keys);
      // A live service whose idea of the current KEK is an hour stale: it re-wraps random tenants' DEKs with 'v1'
      // until the database refuses 'v1' (promoted away), then re-reads the registry and wraps with 'v2'.
      const refusals: string[] = [];
      const app = new TenantCrypto({ db: db.pool, keys, registryTtlMs: 3_600_000, warn: (m) => refusals.push(m) });
      await app.start();
      const writer = startLiveWriter(
        app,
        () => `tenant-${String(Math.floor(Math.random() * 4_000)).padStart(8, '0')}`,
        { createEvery: 0 },
      );

      const first = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), { ...fullRange, batchSize: 100 });
      await writer.stop();
      await app.stop();
      expect(writer.writes).toBeGreaterThan(0);
      expect(refusals).toContainEqual(expect.stringContaining("refused a DEK wrapped with 'v1' (decrypt_only)"));
      expect(await dekFingerprints(db.pool, keys)).toEqual(before);

      expect(first.counters.rewrapped).toBeGreaterThan(0);
      const staleBeforeSecondPass = await staleCount(db);
      const second = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), fullRange);
      expect(second.counters.rewrapped).toBe(staleBeforeSecondPass);
      expect(await staleCount(db)).toBe(0);
      expect(await dekFingerprints(db.pool, keys)).toEqual(before);
    }));

  it('a corrupt DEK is reported with its tenant and reason, and left untouched', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 50 });
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
      await db.pool.query(
        `UPDATE rekey.tenant_deks SET wrapped_dek = set_byte(wrapped_dek, 30, get_byte(wrapped_dek, 30) # 1) WHERE tenant_id = 'tenant-00000007'`,
      );
      const { rows: tampered } = await db.pool.query<{ wrapped_dek: Buffer; version: string }>(
        `SELECT wrapped_dek, version FROM rekey.tenant_deks WHERE tenant_id = 'tenant-00000007'`,
      );

      const result = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), fullRange);

      expect(result.counters).toMatchObject({ rewrapped: 49, failed: 1 });
      expect(result.failures).toEqual([
        { tenantId: 'tenant-00000007', reason: 'authentication failed (wrong key, tampered, or not this row)' },
      ]);
      const after = await new TenantDekStore(db.pool).find('tenant-00000007');
      expect(after?.kekId).toBe('v1');
      expect(after?.version.toString()).toBe(tampered[0]?.version);
      expect(after?.wrappedDek.equals(tampered[0]!.wrapped_dek)).toBe(true);
    }));

  it('a dry run reports what it would do and writes nothing', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 1_000 });
      const snapshot = async () =>
        (
          await db.pool.query<object>(
            `SELECT tenant_id, kek_id, version, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id`,
          )
        ).rows;
      const before = await snapshot();

      const result = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), {
        ...fullRange,
        dryRun: true,
        progressKey: 'dry',
      });

      expect(result.counters.rewrapped).toBe(1_000);
      expect(await snapshot()).toEqual(before);
      expect((await db.pool.query(`SELECT 1 FROM rekey.rewrap_progress`)).rowCount).toBe(0);
    }));

  it('rotates a single tenant on its own', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 20 });
      const result = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), {
        ...fullRange,
        rowId: 'tenant-00000003',
      });
      expect(result.counters.rewrapped).toBe(1);
      expect(await staleCount(db)).toBe(19);
      expect((await new TenantDekStore(db.pool).find('tenant-00000003'))?.kekId).toBe('v2');
    }));

  it('respects its range bounds: (after, until]', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 100 });
      const result = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), {
        ...fullRange,
        after: 'tenant-00000009',
        until: 'tenant-00000019',
      });
      expect(result.counters.rewrapped).toBe(10);
      const moved = await db.pool.query<{ tenant_id: string }>(
        `SELECT tenant_id FROM rekey.tenant_deks WHERE kek_id = 'v2' ORDER BY 1`,
      );
      expect(moved.rows.map((r) => r.tenant_id)).toEqual(
        Array.from({ length: 10 }, (_, i) => `tenant-000000${10 + i}`),
      );
    }));

  it('a batch slower than the keep-alive interval heartbeats meanwhile with the last committed checkpoint, so a paced key store is not taken for a lost worker', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 300 });
      const deps = await engineFor(db.pool, REKEY_PRESET, keys);
      const crypto = sharedRowCrypto();
      // The second batch's crypto waits until the slice has said it is alive while waiting for it (a key store's
      // pace, shown by the condition rather than by time): without the keep-alive it never ends.
      let batches = 0;
      let release: () => void = () => undefined;
      const alive = new Promise<void>((resolve) => (release = resolve));
      const beats: { cursor: string; rewrapped: number }[] = [];
      const committed: string[] = [];
      const paced: RowCrypto = {
        threads: crypto.threads,
        check: (...args) => crypto.check(...args),
        close: () => Promise.resolve(),
        async rewrap(...args) {
          if (++batches === 2) await alive;
          return crypto.rewrap(...args);
        },
      };
      // Fails after a minute without the keep-alive (one is due every 50 ms).
      const result = await within(
        rewrapSlice(
          { ...deps, crypto: paced },
          { ...fullRange, batchSize: 100, progressKey: 'rotation-alive/pass-1/slice-0' },
          {
            onBatch: (checkpoint) => committed.push(checkpoint.cursor),
            onAlive: (checkpoint) => {
              beats.push({ cursor: checkpoint.cursor, rewrapped: checkpoint.counters.rewrapped });
              release();
            },
            aliveEveryMs: 50,
          },
        ),
        60_000,
        () => {
          release(); // lets the slice end, so that its database can be dropped
          return `the slice never heartbeat while its second batch waited (${beats.length} keep-alives)`;
        },
      );

      expect(result.done).toBe(true);
      expect(result.counters.rewrapped).toBe(300);
      expect(beats.length).toBeGreaterThan(0);
      // What it heartbeats is a checkpoint onBatch gave (or the start): never a cursor past what was committed.
      for (const beat of beats) expect(['', ...committed]).toContain(beat.cursor);
    }));

  it('a slice stopped midway and run again resumes from its committed progress and counts each tenant once', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 2_000 });
      await seedPast(db.pool, { keys, kekId: 'v2', count: 30, prefix: 'done-' });
      let batches = 0;
      const input = { ...fullRange, batchSize: 100, progressKey: 'rotation-x/pass-1/slice-0' };
      // The first attempt "crashes" after 5 batches: its last heartbeat is older than its last committed batch.
      let lastHeartbeat: { cursor: string } | undefined;
      const first = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), input, {
        shouldStop: () => batches >= 5,
        onBatch: (checkpoint) => {
          batches++;
          if (batches < 4) lastHeartbeat = { cursor: checkpoint.cursor };
        },
      });
      expect(first.done).toBe(false);
      expect(lastHeartbeat).toBeDefined();

      const second = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), {
        ...input,
        resumeFrom: { cursor: lastHeartbeat!.cursor, counters: first.counters },
      });
      expect(second.done).toBe(true);
      expect(second.counters).toEqual({
        rewrapped: 2_000,
        relabelled: 0,
        alreadyOnTarget: 30,
        skipped: 0,
        casConflicts: 0,
        contended: 0,
        failed: 0,
      });

      const third = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), input);
      expect(third).toMatchObject({ done: true, counters: second.counters });
      expect(await staleCount(db)).toBe(0);
    }));

  it('a time budget stops the slice at a batch boundary with the cursor to go on from, after one batch at least', () =>
    withDatabase(async (db) => {
      await seedPast(db.pool, { keys, kekId: 'v1', count: 1_000 });
      const first = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), {
        ...fullRange,
        batchSize: 100,
        timeBudgetMs: 0,
      });
      // A spent budget still moves one batch: a part that never moved would be continued from where it was, forever.
      expect(first).toMatchObject({ done: false, cursor: 'tenant-00000099', counters: { rewrapped: 100 } });
      const rest = await rewrapSlice(await engineFor(db.pool, REKEY_PRESET, keys), {
        ...fullRange,
        after: first.cursor,
      });
      expect(rest.counters.rewrapped).toBe(900);
    }));
});

describe('kekStatus', () => {
  it('gives the current KEK and the stale count per KEK id', () =>
    withDatabase(async (db) => {
      await db.pool.query(
        `INSERT INTO rekey.keks (target, kek_id, state, fingerprint) VALUES ('rekey', 'v2', 'active', 'kcv1:x')`,
      );
      await seedPast(db.pool, { keys, kekId: 'v1', count: 7, prefix: 'x-' });
      await seedPast(db.pool, { keys, kekId: 'v2', count: 5, prefix: 'y-' });
      expect(await new TenantDekStore(db.pool).kekStatus()).toEqual({
        currentKekId: 'v2',
        dekCounts: { v1: 7, v2: 5 },
        staleCounts: { v1: 7 },
      });
    }));
});
