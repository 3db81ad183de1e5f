// Issue 27, the batch tail on a throttled KMS: a slice's batches run their ReEncrypt calls in one window, so that a
// call the SDK backs off for seconds does not hold the calls of the batches after it; the batches are still written
// one after another, each a compare-and-swap counted once. Against moto, through the throttling proxy.
import { randomUUID } from 'node:crypto';
import { DecryptCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { generateKek, storedKek } from '../../src/keyring/keyring';
import type { RowCrypto } from '../../src/crypto/row-crypto';
import { engineFor } from '../../src/dev/engine';
import { rewrapSlice, type RewrapSliceInput } from '../../src/rewrap/rewrap-slice';
import { readProgress } from '../../src/store/rewrap-progress';
import { KekRegistry } from '../../src/store/kek-registry';
import { REKEY_PRESET } from '../../src/targets/presets';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { throttlingProxy, useMoto } from '../helpers/aws';

const TENANTS = 300;
const contextFor = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });

describe('a slice on a throttled KMS runs the calls of several batches at once and writes them in order', () => {
  const moto = useMoto();

  /**
   * A database of its own with TENANTS DEKs under the KMS key v1 (made by the test with GenerateDataKey, written in
   * rekey's KMS form, 0x02 ‖ blob), and the KMS key v2 to move them to; the worker's KmsKeys reach moto through a
   * throttling proxy. Returns each tenant's plaintext DEK.
   */
  async function keyspace(db: TestDatabase, throttleEvery: number, workerEnv: Record<string, string> = {}) {
    const settings = { ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: `alias/rekey-tail/${randomUUID()}/` };
    const admin = KmsKeys.fromEnv(settings);
    await generateKek(admin, 'v1');
    await generateKek(admin, 'v2');
    await new KekRegistry(db.pool, REKEY_PRESET.name).seedActive('v1', (await storedKek(admin, 'v1')).fingerprint);
    admin.close();
    const client = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
    const arn = `${settings.REKEY_AWS_KMS_ALIAS_PREFIX}kek-v1`;
    const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
    const deks = new Map<string, Buffer>();
    const wrapped: Buffer[] = [];
    for (let i = 0; i < ids.length; i += 25) {
      const made = await Promise.all(
        ids
          .slice(i, i + 25)
          .map((id) =>
            client.send(
              new GenerateDataKeyCommand({ KeyId: arn, KeySpec: 'AES_256', EncryptionContext: contextFor(id, 'v1') }),
            ),
          ),
      );
      made.forEach((m, j) => {
        deks.set(ids[i + j]!, Buffer.from(m.Plaintext!));
        wrapped.push(Buffer.concat([Buffer.from([0x02]), m.CiphertextBlob!]));
      });
    }
    await db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids, wrapped],
    );
    const proxy = await throttlingProxy(moto.server.endpoint, throttleEvery);
    const worker = (env: Record<string, string> = workerEnv) => {
      const keys = KmsKeys.fromEnv({ ...settings, REKEY_AWS_KMS_RATE: '0', ...env, AWS_ENDPOINT_URL: proxy.endpoint });
      return keys;
    };
    const keys = worker();
    await keys.reload();
    const deps = await engineFor(db.pool, REKEY_PRESET, keys);
    /** Each tenant's row: its label, and its DEK as KMS opens it under that label's context (the test's own client). */
    const stored = async () => {
      const { rows } = await db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
        'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
      );
      return Promise.all(
        rows.map(async (row) => {
          const opened = await client.send(
            new DecryptCommand({
              CiphertextBlob: row.wrapped_dek.subarray(1),
              EncryptionContext: contextFor(row.tenant_id, row.kek_id),
            }),
          );
          return {
            id: row.tenant_id,
            kekId: row.kek_id,
            same: Buffer.from(opened.Plaintext!).equals(deks.get(row.tenant_id)!),
          };
        }),
      );
    };
    const close = async () => {
      keys.close();
      client.destroy();
      await proxy.close();
    };
    return { proxy, keys, worker, deps, stored, close };
  }

  /** The real KMS crypto, counting how many batches' calls run at once (instrumentation: every call is KMS's). */
  function counting(crypto: RowCrypto) {
    const seen = { running: 0, most: 0 };
    const wrapped: RowCrypto = {
      threads: crypto.threads,
      pipeline: crypto.pipeline?.bind(crypto),
      check: (...args) => crypto.check(...args),
      close: () => Promise.resolve(),
      async rewrap(...args) {
        seen.most = Math.max(seen.most, ++seen.running);
        try {
          return await crypto.rewrap(...args);
        } finally {
          seen.running--;
        }
      },
    };
    return { crypto: wrapped, seen };
  }

  const input = (progressKey: string): RewrapSliceInput => ({
    after: '',
    until: null,
    batchSize: 20,
    dryRun: false,
    progressKey,
  });

  const reEncrypts = (proxy: { forwarded: Map<string, number> }) => proxy.forwarded.get('ReEncrypt') ?? 0;

  async function withDatabase(fn: (db: TestDatabase) => Promise<void>): Promise<void> {
    const db = await createTestDatabase();
    try {
      await fn(db);
    } finally {
      await db.drop();
    }
  }

  it('while a throttled call backs off, the calls of the batches after it run; every row is written once, in order, with its progress exact', () =>
    withDatabase(async (db) => {
      const k = await keyspace(db, 3);
      try {
        const { crypto, seen } = counting(k.keys.rowCrypto());
        const cursors: string[] = [];
        const result = await rewrapSlice({ ...k.deps, crypto }, input('tail/pass-1/slice-0'), {
          onBatch: (checkpoint) => cursors.push(checkpoint.cursor),
        });

        expect(result.done).toBe(true);
        expect(k.proxy.throttled).toBeGreaterThan(0);
        // The calls of more than one batch were under way at once (one at a time before this change).
        expect(seen.most).toBeGreaterThan(1);
        expect(result.counters).toMatchObject({ rewrapped: TENANTS, casConflicts: 0, contended: 0, failed: 0 });
        expect((await readProgress(db.pool, 'tail/pass-1/slice-0'))?.counters).toMatchObject({
          rewrapped: TENANTS,
          casConflicts: 0,
        });
        // One ReEncrypt reached KMS per row: no row was moved twice (a throttled call is answered by the proxy).
        expect(reEncrypts(k.proxy)).toBe(TENANTS);
        // Written in order: each checkpoint's cursor after the one before.
        expect(cursors.filter((c, i) => i > 0 && c < cursors[i - 1]!)).toEqual([]);
        const rows = await k.stored();
        expect(rows.filter((r) => r.kekId !== 'v2' || !r.same)).toEqual([]);
      } finally {
        await k.close();
      }
    }));

  it('a batch whose call fails for good fails the slice and writes neither its rows nor any after it; the next attempt writes them, each once', () =>
    withDatabase(async (db) => {
      // No retry by the SDK: the 45th request is throttled and fails its batch, with the calls of other batches under way.
      const k = await keyspace(db, 45, { AWS_MAX_ATTEMPTS: '1' });
      try {
        const key = 'fail/pass-1/slice-0';
        await expect(rewrapSlice({ ...k.deps, crypto: k.keys.rowCrypto() }, input(key))).rejects.toThrow();
        expect(k.proxy.inFlight).toBe(0);
        const progress = (await readProgress(db.pool, key))!;
        const written = progress.counters.rewrapped;
        expect(written).toBeLessThan(TENANTS);
        // What the progress counts is exactly what was written: the rows up to its cursor, and none after it.
        const rows = await k.stored();
        const moved = rows.filter((r) => r.kekId === 'v2');
        expect(moved.length).toBe(written);
        expect(moved.filter((r) => progress.cursor === null || r.id > progress.cursor)).toEqual([]);
        expect(rows.filter((r) => r.kekId === 'v1' && progress.cursor !== null && r.id <= progress.cursor)).toEqual([]);

        // The next attempt (Temporal's retry), with the SDK's retries again: it goes on from the progress.
        k.proxy.throttleEvery = 0;
        const before = reEncrypts(k.proxy);
        const retry = k.worker({});
        await retry.reload();
        try {
          const result = await rewrapSlice({ ...k.deps, crypto: retry.rowCrypto() }, input(key));
          expect(result.done).toBe(true);
          expect(result.counters).toMatchObject({ rewrapped: TENANTS, casConflicts: 0 });
        } finally {
          retry.close();
        }
        // Each row left behind was moved once, and no row written before was moved again.
        expect(reEncrypts(k.proxy) - before).toBe(TENANTS - written);
        const after = await k.stored();
        expect(after.filter((r) => r.kekId !== 'v2' || !r.same)).toEqual([]);
      } finally {
        await k.close();
      }
    }));

  it('a slice stopped (pause, abort) while calls are under way returns only once each has answered, having written exactly what its progress counts; resumed, it writes the rest once', () =>
    withDatabase(async (db) => {
      const k = await keyspace(db, 3);
      try {
        const key = 'stop/pass-1/slice-0';
        let batches = 0;
        const first = await rewrapSlice({ ...k.deps, crypto: k.keys.rowCrypto() }, input(key), {
          onBatch: () => batches++,
          shouldStop: () => batches >= 2,
          onAlive: () => undefined,
          aliveEveryMs: 40,
        });
        // When the slice returns (what the workflow waits for before it counts the pause done), no call of it is
        // under way: none can answer into a write after it.
        expect(k.proxy.inFlight).toBe(0);
        expect(first.done).toBe(false);
        const progress = (await readProgress(db.pool, key))!;
        const written = progress.counters.rewrapped;
        expect(written).toBe(first.counters.rewrapped);
        expect(written).toBeLessThan(TENANTS);
        const rows = await k.stored();
        expect(rows.filter((r) => r.kekId === 'v2').length).toBe(written);
        expect(rows.filter((r) => r.kekId === 'v2' && r.id > first.cursor)).toEqual([]);

        const before = reEncrypts(k.proxy);
        const second = await rewrapSlice({ ...k.deps, crypto: k.keys.rowCrypto() }, input(key));
        expect(second.done).toBe(true);
        expect(second.counters).toMatchObject({ rewrapped: TENANTS, casConflicts: 0 });
        expect(reEncrypts(k.proxy) - before).toBe(TENANTS - written);
        const after = await k.stored();
        expect(after.filter((r) => r.kekId !== 'v2' || !r.same)).toEqual([]);
      } finally {
        await k.close();
      }
    }));
});
