import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import type { KekState } from '../../src/envelope/kek-lifecycle';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { restoreKek } from '../../src/targets/restore-kek';
import { TargetRuntimes } from '../../src/targets/runtime';
import { TenantCrypto } from '../../src/tenant-crypto';
import { DekUnwrapError } from '../../src/errors';
import { runRotation } from '../helpers/rotation-run';
import { lossyVaultProxy, readmePolicy, tokenWithPolicy, useVaultServers } from '../helpers/vault';
import { destroyedAfterWindow, freshKeyspace, refusalOf, rotateUnderLiveWriter } from '../helpers/store-rotation';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

const TENANTS = 600;
/** The key the README's policy names. */
const README_KEY = 'rekey-kek';
/** The 0x03 form and the derivation context, written here from the README, not with rekey's codec. */
const TRANSIT_FORMAT_BYTE = Buffer.from([0x03]);
const contextOf = (tenantId: string) => Buffer.from(`rekey/transit-dek/v1\0${tenantId}`).toString('base64');
const tenantAt = (n: number) => `tenant-${String(n).padStart(5, '0')}`;

interface KeyState {
  latest_version: number;
  min_decryption_version: number;
  min_encryption_version: number;
  min_available_version: number;
}

describe('Vault Transit key store against a real Vault server', () => {
  const servers = useVaultServers();
  const registry = () => new KekRegistry(servers.db.pool, BUILTIN_TARGET);
  const onServers = () => ({ env: servers.temporal.env, db: servers.db.pool });
  const keyState = async (key: string) =>
    (await vaultRequest<{ data: KeyState }>(servers.vault, 'GET', `transit/keys/${key}`)).data;

  /**
   * A keyspace of its own: a Transit key made by rekey (v1), the registry seeded, and TENANTS DEKs encrypted by the
   * test itself under v1 with each tenant's context (one batch request); returns each tenant's DEK.
   */
  async function keyspace(key = `rekey-${randomUUID()}`) {
    const env = { ...servers.vault.env, REKEY_VAULT_TRANSIT_KEY: key, REKEY_VAULT_TRANSIT_RATE: '0' };
    const keys = VaultTransitKeys.fromEnv(env);
    await freshKeyspace(servers.db.pool, keys);
    const ids = Array.from({ length: TENANTS }, (_, i) => tenantAt(i));
    const deks = new Map(ids.map((id) => [id, randomBytes(32)]));
    const encrypted = await vaultRequest<{ data: { batch_results: { ciphertext: string }[] } }>(
      servers.vault,
      'POST',
      `transit/encrypt/${key}`,
      {
        key_version: 1,
        batch_input: ids.map((id) => ({ plaintext: deks.get(id)!.toString('base64'), context: contextOf(id) })),
      },
    );
    const wrapped = encrypted.data.batch_results.map((r) =>
      Buffer.concat([TRANSIT_FORMAT_BYTE, Buffer.from(r.ciphertext)]),
    );
    await servers.db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids, wrapped],
    );
    return { key, env, keys, deks };
  }

  /** Each tenant's DEK as Vault decrypts it from the stored row with the tenant's context (root token). */
  async function storedDeks(key: string): Promise<Map<string, { kekId: string; version: string; dek: Buffer }>> {
    const { rows } = await servers.db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
      'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
    );
    const decrypted = await vaultRequest<{ data: { batch_results: { plaintext?: string; error?: string }[] } }>(
      servers.vault,
      'POST',
      `transit/decrypt/${key}`,
      {
        batch_input: rows.map((row) => ({
          ciphertext: row.wrapped_dek.subarray(1).toString(),
          context: contextOf(row.tenant_id),
        })),
      },
    );
    const out = new Map<string, { kekId: string; version: string; dek: Buffer }>();
    rows.forEach((row, i) => {
      expect(row.wrapped_dek[0]).toBe(0x03);
      const result = decrypted.data.batch_results[i]!;
      expect(result.error, row.tenant_id).toBeUndefined();
      out.set(row.tenant_id, {
        kekId: row.kek_id,
        version: /^vault:(v\d+):/.exec(row.wrapped_dek.subarray(1).toString())![1]!,
        dek: Buffer.from(result.plaintext!, 'base64'),
      });
    });
    return out;
  }

  const rotate = async (activities: Activities, request: RotationRequest) =>
    (await runRotation(servers.temporal.env, activities, servers.db.pool, request, { timeoutMs: 120_000 })).report;

  it("a rotation moves every DEK with batched rewrap while a live writer works, the worker's token holding exactly the README's policy: the worker never decrypts or makes a plaintext DEK, its requests are counted, v1 is retired by min_decryption_version, every DEK is the same under v2, and v1 restored within its window decrypts again", async () => {
    const token = await tokenWithPolicy(servers.vault, 'rekey-transit', readmePolicy('vault-transit'));
    const { key, env, keys: seeder, deks } = await keyspace(README_KEY);
    seeder.close();
    // The worker talks to Vault through a proxy that records its requests, with the README's policy.
    const proxy = await lossyVaultProxy(servers.vault.address, () => false);
    const workerKeys = VaultTransitKeys.fromEnv({
      ...env,
      VAULT_ADDR: proxy.address,
      VAULT_TOKEN: token,
      REKEY_VAULT_TRANSIT_BATCH: '50',
    });
    await workerKeys.reload();
    const appKeys = VaultTransitKeys.fromEnv(env);
    await appKeys.reload();
    const rotation = { tenantAt: (n: number) => tenantAt(n % TENANTS), pauseMs: 2, timeoutMs: 120_000 };
    try {
      await rotateUnderLiveWriter(onServers(), { keys: workerKeys, appKeys }, rotation, async ({ report, writer }) => {
        const asked = (call: string) => proxy.forwarded.filter((r) => r === call).length;
        expect(asked(`POST transit/decrypt/${key}`)).toBe(0);
        expect(asked(`POST transit/datakey/plaintext/${key}`)).toBe(0);
        expect(asked(`POST transit/keys/${key}/rotate`)).toBe(1);
        const rewraps = asked(`POST transit/rewrap/${key}`);
        // Batches of 50: far fewer requests than rows, and the progress counts each request once.
        expect(rewraps).toBeGreaterThanOrEqual(TENANTS / 50);
        expect(rewraps).toBeLessThan(TENANTS / 5);
        expect(report.counters.rewrapped).toBeGreaterThan(0);
        expect(report.counters.keyStoreRequests).toBeGreaterThanOrEqual(Math.ceil(report.counters.rewrapped / 50));
        expect(report.counters.keyStoreRequests).toBeLessThanOrEqual(rewraps);

        const after = await storedDeks(key);
        for (const [tenantId, dek] of deks) {
          expect(after.get(tenantId)).toMatchObject({ kekId: 'v2', version: 'v2' });
          expect(after.get(tenantId)?.dek.equals(dek)).toBe(true);
        }
        const reader = new TenantCrypto({
          db: servers.db.pool,
          keys: VaultTransitKeys.fromEnv(env),
          registryTtlMs: 100,
        });
        await reader.start();
        for (const [tenantId, ciphertext] of writer.written) {
          expect((await reader.decrypt(tenantId, ciphertext)).toString()).toBe('fresh');
        }
        await reader.stop();

        expect(await keyState(key)).toMatchObject({ latest_version: 2, min_decryption_version: 2 });
        expect((await registry().get('v1'))?.state).toBe('retired');
        expect((await registry().get('v2'))?.fingerprint).toMatch(new RegExp(`^vault-transit:transit/${key}:v2@\\d+$`));

        // Within its window v1 comes back: decrypt-only in the registry, decryptable in Vault.
        const runtime = await new TargetRuntimes({ db: servers.db.pool, keys: workerKeys }).get();
        await restoreKek(runtime, 'v1', 'an old replica still reads v1', 'bob');
        expect((await registry().get('v1'))?.state).toBe('decrypt_only');
        expect(await keyState(key)).toMatchObject({ min_decryption_version: 1 });
      });
    } finally {
      appKeys.close();
      workerKeys.close();
      await proxy.close();
    }
  });

  it("a DEK copied into another tenant's row opens under no context but its own: the derived key binds it to its tenant, in decrypt and in rewrap alike", async () => {
    const { keys, deks } = await keyspace();
    try {
      await generateKek(keys, 'v2');
      const { rows } = await servers.db.pool.query<{ wrapped_dek: Buffer }>(
        'SELECT wrapped_dek FROM rekey.tenant_deks WHERE tenant_id = $1',
        [tenantAt(1)],
      );
      const ofTenant1 = rows[0]!.wrapped_dek;
      expect((await keys.unwrapDek('v1', tenantAt(1), ofTenant1)).equals(deks.get(tenantAt(1))!)).toBe(true);
      await expect(keys.unwrapDek('v1', tenantAt(2), ofTenant1)).rejects.toThrow(DekUnwrapError);
      await expect(keys.rewrapDek('v1', 'v2', tenantAt(2), ofTenant1)).rejects.toThrow(
        /Vault Transit refused it \(cipher: message authentication failed\)/,
      );
      const moved = await keys.rewrapDek('v1', 'v2', tenantAt(1), ofTenant1);
      expect(moved.subarray(0, 10).toString('latin1')).toBe('\x03vault:v2:');
      expect((await keys.unwrapDek('v2', tenantAt(1), moved)).equals(deks.get(tenantAt(1))!)).toBe(true);
    } finally {
      keys.close();
    }
  });

  it('a rotate and a rewrap whose answers were lost after Vault acted are retried by Temporal: one new version, every DEK the same', async () => {
    const { key, env, keys: seeder, deks } = await keyspace();
    seeder.close();
    // The first rotate and the first rewrap batch: Vault acts, the worker never hears.
    const dropped = new Set<string>();
    const proxy = await lossyVaultProxy(servers.vault.address, (method, apiPath) => {
      const losing = apiPath === `transit/keys/${key}/rotate` || apiPath === `transit/rewrap/${key}`;
      if (!losing || dropped.has(apiPath)) return false;
      dropped.add(apiPath);
      return true;
    });
    const keys = VaultTransitKeys.fromEnv({ ...env, VAULT_ADDR: proxy.address });
    await keys.reload();
    try {
      const report = await rotate(createActivities({ db: servers.db.pool, keys }), {
        from: 'v1',
        to: 'new',
        gracePeriod: '1d',
        fleetLiveWithin: '1h',
      });
      expect(report.outcome).toBe('completed');
      expect(proxy.lost).toBe(2);
      expect(proxy.forwarded.filter((r) => r === `POST transit/keys/${key}/rotate`)).toHaveLength(1);
      expect(await keyState(key)).toMatchObject({ latest_version: 2 });
      const after = await storedDeks(key);
      for (const [tenantId, dek] of deks) expect(after.get(tenantId)?.dek.equals(dek)).toBe(true);
    } finally {
      keys.close();
      await proxy.close();
    }
  });

  it('a token whose policy lacks update on transit/rewrap is refused before anything is written, naming the capability and the path', async () => {
    const key = `rekey-${randomUUID()}`;
    const policy = readmePolicy('vault-transit')
      .replaceAll(README_KEY, key)
      .replace(`path "transit/rewrap/${key}" {\n  capabilities = ["update"]\n}\n`, '');
    expect(policy).not.toContain('rewrap');
    const token = await tokenWithPolicy(servers.vault, `rekey-no-rewrap-${randomUUID()}`, policy);
    const { env, keys: seeder } = await keyspace(key);
    seeder.close();
    const keys = VaultTransitKeys.fromEnv({ ...env, VAULT_TOKEN: token });
    await keys.reload();
    try {
      expect(await refusalOf(onServers(), keys)).toMatch(
        `the token's policy lacks "update" on "transit/rewrap/${key}"`,
      );
      expect(await keyState(key)).toMatchObject({ latest_version: 1 });
      expect((await registry().list()).map((k) => k.kekId)).toEqual(['v1']);
    } finally {
      keys.close();
    }
  });

  it('after its restore window the retired version is trimmed (Transit trim), the registry says destroyed, and a restore is refused', async () => {
    const { key, keys } = await keyspace();
    try {
      const destroyed = { detail: /versions up to 1 of Vault Transit key .* are trimmed/, timeoutMs: 120_000 };
      await destroyedAfterWindow(onServers(), keys, destroyed, async () => {
        expect(await keyState(key)).toMatchObject({ min_available_version: 2, min_decryption_version: 2 });
      });
    } finally {
      keys.close();
    }
  });

  it('trim removes every older version too: a destroy is refused while an older KEK of the key is retired within its window, naming it, and goes ahead once that one is destroyed', async () => {
    const key = `rekey-${randomUUID()}`;
    const keys = VaultTransitKeys.fromEnv({ ...servers.vault.env, REKEY_VAULT_TRANSIT_KEY: key });
    try {
      // Made for one keyspace, which its owner record names (retire and trim touch no key without one).
      for (const kekId of ['v1', 'v2', 'v3']) await generateKek(keys, kekId, { owner: 'trim-test/public.tenant_deks' });
      const fingerprints = new Map<string, string>();
      for (const kekId of ['v1', 'v2', 'v3']) fingerprints.set(kekId, await fingerprintIn(keys, kekId));
      const record = (kekId: string, state: KekState) => ({ kekId, fingerprint: fingerprints.get(kekId)!, state });
      const [v1, v2, v3] = [record('v1', 'retired'), record('v2', 'retired'), record('v3', 'active')];
      await keys.retire('v1', [v1, record('v2', 'decrypt_only'), v3]);
      await keys.retire('v2', [v1, v2, v3]);
      expect(await keyState(key)).toMatchObject({ min_decryption_version: 3 });
      await expect(keys.destroy('v2', [v1, v2, v3])).rejects.toThrow(
        /trimming to version 3 would remove 'v1', which the registry has not destroyed .*: not trimmed/,
      );
      expect(await keyState(key)).toMatchObject({ min_available_version: 0 });
      await keys.destroy('v1', [v1, v2, v3]);
      expect(await keyState(key)).toMatchObject({ min_available_version: 2 });
      await keys.destroy('v2', [{ ...v1, state: 'destroyed' }, v2, v3]);
      expect(await keyState(key)).toMatchObject({ min_available_version: 3, latest_version: 3 });
    } finally {
      keys.close();
    }
  });
});
