import { randomUUID } from 'node:crypto';
import { describe, expect, inject, it } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';
import { dekFingerprints, seedTenants, tenantIdFor } from '../../src/dev/tenants';
import { detectKeyStore, openStoreDriver } from '../../src/keyring/open';
import { resolveKek, fingerprintIn, storedIds } from '../helpers/store-keys';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import { KeyStoreRefusedError } from '../../src/errors';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { restoreKek } from '../../src/targets/restore-kek';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRotation } from '../helpers/rotation-run';
import { lossyVaultProxy, readmePolicy, tokenWithPolicy, useVaultServers } from '../helpers/vault';
import { destroyedAfterWindow, refusalOf, rotateUnderLiveWriter, seededKeyspace } from '../helpers/store-rotation';
import { generateKek } from '../../src/keyring/keyring';

const TENANTS = 1_000;
/** The path the README's policy names. */
const README_PATH = 'encryption/master_key';

interface KvMetadata {
  current_version: number;
  custom_metadata: Record<string, string> | null;
  versions: Record<string, { deletion_time: string; destroyed: boolean }>;
}

describe('Vault KV v2 key store against a real Vault server', () => {
  const servers = useVaultServers();

  const metadataOf = async (path: string, server: VaultServer = servers.vault) =>
    (await vaultRequest<{ data: KvMetadata }>(server, 'GET', `secret/metadata/${path}`)).data;
  /** Each version's state: live, deleted or destroyed. */
  const statesOf = async (path: string) =>
    Object.fromEntries(
      Object.entries((await metadataOf(path)).versions).map(([v, s]) => [
        v,
        s.destroyed ? 'destroyed' : s.deletion_time ? 'deleted' : 'live',
      ]),
    );

  /** A keyspace of its own: a secret at `path` holding v1 (current), the registry seeded, tenants wrapped by it. */
  async function keyspace(path = `rekey/${randomUUID()}`, env: Record<string, string> = servers.vault.env) {
    const keys = VaultKvKeys.fromEnv({ ...env, REKEY_VAULT_KV_PATH: path });
    return { path, keys, before: await seededKeyspace(servers.db.pool, keys, TENANTS) };
  }

  const rotate = async (activities: Activities, request: RotationRequest) =>
    (await runRotation(servers.temporal.env, activities, servers.db.pool, request, { timeoutMs: 90_000 })).report;
  const registry = () => new KekRegistry(servers.db.pool, BUILTIN_TARGET);
  const onServers = () => ({ env: servers.temporal.env, db: servers.db.pool });

  it("a full rotation with a live writer, the worker's token holding exactly the README's policy: v2 written as a new version and named, marked current, v1 soft-deleted; every DEK is the same from a fresh read of the store, and v1 restored within its window is undeleted", async () => {
    const token = await tokenWithPolicy(servers.vault, 'rekey-kv', readmePolicy('vault-kv'));
    const { path, keys: seeder, before } = await keyspace(README_PATH);
    seeder.close();
    const env = { VAULT_ADDR: servers.vault.address, VAULT_TOKEN: token, REKEY_VAULT_KV_PATH: path };
    const keys = VaultKvKeys.fromEnv(env);
    await keys.reload();
    const appKeys = VaultKvKeys.fromEnv(env);
    await appKeys.reload();
    const rotation = { tenantAt: (n: number) => tenantIdFor('tenant-', n % TENANTS), timeoutMs: 90_000 };
    try {
      await rotateUnderLiveWriter(onServers(), { keys, appKeys }, rotation, async ({ writer, app }) => {
        const metadata = await metadataOf(path);
        expect(metadata.current_version).toBe(2);
        expect(metadata.custom_metadata).toMatchObject({
          'rekey:kek:v1': '1',
          'rekey:kek:v2': '2',
          'rekey:current': 'v2',
        });
        expect(await statesOf(path)).toEqual({ 1: 'deleted', 2: 'live' });
        const latest = await vaultRequest<{ data: { data: Record<string, string> } }>(
          servers.vault,
          'GET',
          `secret/data/${path}`,
        );
        expect(Object.keys(latest.data.data).sort()).toEqual(['rekey_kek', 'value']);
        expect(latest.data.data.rekey_kek).toBe('v2');
        expect((await registry().get('v1'))?.state).toBe('retired');
        expect((await registry().get('v2'))?.state).toBe('active');
        const { rows } = await servers.db.pool.query<{ kek_id: string }>(
          'SELECT DISTINCT kek_id FROM rekey.tenant_deks',
        );
        expect(rows.map((r) => r.kek_id)).toEqual(['v2']);

        const fresh = VaultKvKeys.fromEnv(env);
        await fresh.reload();
        expect(await storedIds(fresh)).toEqual(['v2']);
        expect(fresh.configuredCurrent).toBe('v2');
        expect(await fingerprintIn(fresh, 'v2')).toBe((await registry().get('v2'))?.fingerprint);
        const after = await dekFingerprints(servers.db.pool, fresh);
        for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);
        for (const [tenant, ciphertext] of writer.written)
          expect((await app.decrypt(tenant, ciphertext)).toString()).toBe('fresh');
        fresh.close();

        // Within its window v1 is restored: undeleted in Vault, decrypt-only in the registry, usable again.
        const runtime = await new TargetRuntimes({ db: servers.db.pool, keys }).get();
        // Soft-deleted: no reader gets its bytes (Vault answers 404 for the version) until it is restored.
        await keys.reload();
        expect((await storedIds(keys)).includes('v1')).toBe(false);
        await restoreKek(runtime, 'v1', 'an old replica still reads v1', 'bob');
        expect(await statesOf(path)).toEqual({ 1: 'live', 2: 'live' });
        expect((await registry().get('v1'))?.state).toBe('decrypt_only');
        (await resolveKek(keys, 'v1', await registry().get('v1'))).key.fill(0);
      });
    } finally {
      appKeys.close();
      keys.close();
    }
  });

  it('after its restore window the retired version is destroyed in Vault (KV destroy), the registry says destroyed, and a restore is refused', async () => {
    const { path, keys } = await keyspace();
    try {
      const destroyed = { detail: /version 1 of Vault KV secret .* is destroyed/, timeoutMs: 90_000 };
      await destroyedAfterWindow(onServers(), keys, destroyed, async () => {
        expect(await statesOf(path)).toEqual({ 1: 'destroyed', 2: 'live' });
        await keys.reload();
        expect((await storedIds(keys)).includes('v1')).toBe(false);
      });
    } finally {
      keys.close();
    }
  });

  it('a token whose policy lacks one capability of the README’s (patch on the metadata) is refused before anything is written, naming the capability and the path', async () => {
    const path = `rekey/${randomUUID()}`;
    const policy = readmePolicy('vault-kv')
      .replaceAll(README_PATH, path)
      .replace('capabilities = ["read", "patch"]', 'capabilities = ["read"]');
    expect(policy).not.toContain('"patch"');
    const token = await tokenWithPolicy(servers.vault, `rekey-no-patch-${randomUUID()}`, policy);
    const { keys: seeder, before } = await keyspace(path);
    seeder.close();
    const keys = VaultKvKeys.fromEnv({
      VAULT_ADDR: servers.vault.address,
      VAULT_TOKEN: token,
      REKEY_VAULT_KV_PATH: path,
    });
    await keys.reload();
    try {
      // Refused by the capability check before a provision, or (where the keyspace's owner record is written first,
      // at load) by Vault's answer to that write: either way naming the capability and the path.
      expect(await refusalOf(onServers(), keys)).toMatch(
        new RegExp(
          `the token's policy (lacks "patch" on|must grant the capability "patch" on path) "secret/metadata/${path}"`,
        ),
      );
      expect((await metadataOf(path)).current_version).toBe(1);
      expect((await registry().list()).map((k) => k.kekId)).toEqual(['v1']);
      const after = await dekFingerprints(servers.db.pool, keys);
      expect(after).toEqual(before);
    } finally {
      keys.close();
    }
  });

  it('a provision whose write Vault carried out but whose answer was lost is retried by Temporal and names that version: one version per KEK', async () => {
    const { path, keys: seeder } = await keyspace();
    seeder.close();
    let writes = 0;
    const proxy = await lossyVaultProxy(
      servers.vault.address,
      (method, apiPath) => method === 'POST' && apiPath === `secret/data/${path}` && writes++ === 0,
    );
    const keys = VaultKvKeys.fromEnv({ ...servers.vault.env, VAULT_ADDR: proxy.address, REKEY_VAULT_KV_PATH: path });
    await keys.reload();
    try {
      const report = await rotate(createActivities({ db: servers.db.pool, keys }), {
        from: 'v1',
        to: 'new',
        gracePeriod: '1d',
        fleetLiveWithin: '1h',
      });
      expect(proxy.lost).toBe(1);
      expect(report.outcome).toBe('completed');
      expect(proxy.forwarded.filter((r) => r === `POST secret/data/${path}`)).toHaveLength(1);
      const metadata = await metadataOf(path);
      expect(metadata.current_version).toBe(2);
      expect(metadata.custom_metadata).toMatchObject({ 'rekey:kek:v2': '2', 'rekey:current': 'v2' });
      expect((await registry().get('v2'))?.fingerprint).toBe(await fingerprintIn(keys, 'v2'));
    } finally {
      keys.close();
      await proxy.close();
    }
  });

  it('a sealed Vault stops the rotation at its first call, saying to unseal it, and an unreachable one after the step’s retries: nothing is written either way', async () => {
    const own = await startVault(inject('toolchain').vault);
    const path = `rekey/${randomUUID()}`;
    let keys: VaultKvKeys | undefined;
    try {
      keys = (await keyspace(path, own.env)).keys;
      const before = await dekFingerprints(servers.db.pool, keys);
      await vaultRequest(own, 'POST', 'sys/seal');
      expect(await refusalOf(onServers(), keys)).toMatch(/Vault at .* is sealed: .*vault operator unseal/);
      expect((await registry().list()).map((k) => k.kekId)).toEqual(['v1']);

      await own.stop();
      expect(await refusalOf(onServers(), keys, 110_000)).toMatch(/Vault at .* did not answer/);
      expect((await registry().list()).map((k) => k.kekId)).toEqual(['v1']);
      expect(await dekFingerprints(servers.db.pool, keys)).toEqual(before);
    } finally {
      keys?.close();
      await own.stop();
    }
  });

  it('REKEY_KEY_PROVIDER=auto picks AWS from AWS_REGION first, then Vault KV from VAULT_ADDR, else the keyring file; a hand-made secret (vault kv put … value=…) is read as KEK kv-v1 and named by the registry’s id before anything moves', async () => {
    expect(detectKeyStore({ AWS_REGION: 'eu-west-1', VAULT_ADDR: servers.vault.address }).provider).toBe(
      'aws-secrets-manager',
    );
    expect(detectKeyStore({ VAULT_ADDR: servers.vault.address })).toEqual({
      provider: 'vault',
      why: 'VAULT_ADDR is set',
    });
    expect(detectKeyStore({}).provider).toBe('file');
    const path = `rekey/${randomUUID()}`;
    const auto = openStoreDriver({ provider: 'auto' }, { ...servers.vault.env, REKEY_VAULT_KV_PATH: path });
    expect(auto).toBeInstanceOf(VaultKvKeys);
    expect(() =>
      openStoreDriver({ provider: 'auto' }, { VAULT_ADDR: servers.vault.address, REKEY_VAULT_KV_PATH: path }),
    ).toThrow(/VAULT_TOKEN must/);
    expect(() => openStoreDriver({ provider: 'vault' }, servers.vault.env)).toThrow(/REKEY_VAULT_KV_PATH must/);

    const handMade = Buffer.alloc(32, 9).toString('base64url');
    await vaultRequest(servers.vault, 'POST', `secret/data/${path}`, { data: { value: handMade } });
    await auto.reload();
    expect(await storedIds(auto)).toEqual(['kv-v1']);
    expect(auto.configuredCurrent).toBe('kv-v1');
    await servers.db.pool.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
    await registry().seedActive('kv-v1', await fingerprintIn(auto, 'kv-v1'));
    await seedTenants({ db: servers.db.pool, keys: auto, kekId: 'kv-v1', count: 20 });
    const before = await dekFingerprints(servers.db.pool, auto);
    const report = await rotate(createActivities({ db: servers.db.pool, keys: auto }), {
      from: 'kv-v1',
      to: 'new',
      gracePeriod: '1d',
      fleetLiveWithin: '1h',
    });
    expect(report.outcome).toBe('completed');
    const metadata = await metadataOf(path);
    expect(metadata.custom_metadata).toMatchObject({
      'rekey:kek:kv-v1': '1',
      'rekey:kek:v1': '2',
      'rekey:current': 'v1',
    });
    expect(await statesOf(path)).toEqual({ 1: 'deleted', 2: 'live' });
    const fresh = VaultKvKeys.fromEnv({ ...servers.vault.env, REKEY_VAULT_KV_PATH: path });
    await fresh.reload();
    const after = await dekFingerprints(servers.db.pool, fresh);
    for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);
    fresh.close();
    auto.close();
  });

  it('the owner record: the first KEK of a secret given its keyspace records it as custom_metadata rekey:keyspace; adopt records it on a secret without one only when the registry records its key (else refused, naming rekey keys claim), and leaves one that has one', async () => {
    const env = { ...servers.vault.env, REKEY_VAULT_KV_PATH: `rekey/${randomUUID()}` };
    const keys = VaultKvKeys.fromEnv(env);
    try {
      expect(await keys.ownerOf('v1')).toBeUndefined();
      await generateKek(keys, 'v1', { owner: 'db-1/rekey.tenant_deks' });
      expect(await keys.ownerOf('v1')).toBe('db-1/rekey.tenant_deks');
      await keys.adopt('db-2/public.tenant');
      expect(await keys.ownerOf('v1')).toBe('db-1/rekey.tenant_deks');

      const handMade = VaultKvKeys.fromEnv({ ...env, REKEY_VAULT_KV_PATH: `rekey/${randomUUID()}` });
      await vaultRequest(servers.vault, 'POST', `secret/data/${handMade.path}`, {
        data: { value: Buffer.alloc(32, 3).toString('base64url') },
      });
      await expect(handMade.adopt('db-1/rekey.tenant_deks', [])).rejects.toThrow(KeyStoreRefusedError);
      await expect(handMade.adopt('db-1/rekey.tenant_deks', [])).rejects.toThrow(
        /rekey keys claim kv-v1 --fingerprint/,
      );
      expect((await metadataOf(handMade.path)).custom_metadata?.['rekey:keyspace']).toBeUndefined();
      const fingerprint = await fingerprintIn(handMade, 'kv-v1');
      await handMade.adopt('db-1/rekey.tenant_deks', [{ kekId: 'kv-v1', fingerprint, state: 'active' }]);
      expect((await metadataOf(handMade.path)).custom_metadata).toEqual({ 'rekey:keyspace': 'db-1/rekey.tenant_deks' });
      handMade.close();
    } finally {
      keys.close();
    }
  });
});
