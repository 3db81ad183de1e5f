// The keyring seam (issue 26) over the remote stores, against the real servers their drivers talk to: moto (AWS
// Secrets Manager, AWS KMS), the Vault server the setup builds (KV v2, Transit) and PostgreSQL (the registry).
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { SecretsManagerKeys } from '../../src/keyring/drivers/aws-secrets-manager';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { CipherReleasedError, KeyMaterialError, KeyStoreRefusedError } from '../../src/errors';
import { useMoto } from '../helpers/aws';
import { createTestKeys } from '../helpers/keys';
import {
  expectDestroyRefusedWhileOthersHold,
  expectForeignRefused,
  expectRemoteRoundTrip,
  keyringFor,
  rotatedOn,
} from '../helpers/keyring';
import { storedIds } from '../helpers/store-keys';
import { kmsEnv, transitEnv } from '../helpers/store-env';
import { useVaultAndDatabase } from '../helpers/vault';
import { generateKek } from '../../src/keyring/keyring';

const KEYSPACE = 'db-a/public.tenant_deks';
const OTHER = 'db-b/public.orders';

describe('the keyring and its drivers over remote key stores, against moto, Vault and PostgreSQL', () => {
  const moto = useMoto();
  const servers = useVaultAndDatabase();
  const fresh = () => servers.db.pool.query('TRUNCATE rekey.kek_events, rekey.keks');
  const kms = () => KmsKeys.fromEnv(kmsEnv(moto.server.env, 'rekey-keyring'));
  const transit = (key?: string) => VaultTransitKeys.fromEnv(transitEnv(servers.vault.env, key));

  describe('a keyring refuses to retire or destroy a KEK its keyspace does not own', () => {
    it("AWS Secrets Manager: the secret's tag rekey:keyspace names another keyspace; both versions stay", async () => {
      await fresh();
      const secretId = `rekey/keyring/${randomUUID()}`;
      const store = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
      await generateKek(store, 'v1', { owner: OTHER });
      await generateKek(store, 'v2', { owner: OTHER });
      const registry = await rotatedOn(servers.db.pool, store);
      await expectForeignRefused(servers.db.pool, keyringFor(servers.db.pool, store, KEYSPACE), registry, OTHER);
      const after = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
      await after.reload();
      expect(await storedIds(after)).toEqual(['v1', 'v2']);
    });

    it("AWS KMS: each key's tag rekey:keyspace names another keyspace; the key stays enabled", async () => {
      await fresh();
      const store = kms();
      await generateKek(store, 'v1', { owner: OTHER });
      await generateKek(store, 'v2', { owner: OTHER });
      const registry = await rotatedOn(servers.db.pool, store);
      await expectForeignRefused(servers.db.pool, keyringFor(servers.db.pool, store, KEYSPACE), registry, OTHER);
      await store.reload();
      expect((await storedIds(store)).includes('v1')).toBe(true);
    });

    it("Vault KV v2: the secret's custom_metadata rekey:keyspace names another keyspace; no version is deleted", async () => {
      await fresh();
      const store = VaultKvKeys.fromEnv({ ...servers.vault.env, REKEY_VAULT_KV_PATH: `rekey/${randomUUID()}` });
      await generateKek(store, 'v1', { owner: OTHER });
      await generateKek(store, 'v2', { owner: OTHER });
      const registry = await rotatedOn(servers.db.pool, store);
      await expectForeignRefused(servers.db.pool, keyringFor(servers.db.pool, store, KEYSPACE), registry, OTHER);
      await store.reload();
      expect(await storedIds(store)).toEqual(['v1', 'v2']);
    });

    it("Vault Transit (its owner record names this keyspace): destroy is refused while another keyspace's registry holds the version; it is not trimmed", async () => {
      await fresh();
      const key = `rekey-${randomUUID()}`;
      const store = transit(key);
      await generateKek(store, 'v1', { owner: KEYSPACE });
      await generateKek(store, 'v2', { owner: KEYSPACE });
      const registry = await rotatedOn(servers.db.pool, store);
      await expectDestroyRefusedWhileOthersHold(
        servers.db.pool,
        keyringFor(servers.db.pool, store, KEYSPACE),
        registry,
      );
      // Retired (min_decryption_version raised), not trimmed: Vault keeps every version (trim would raise this).
      const state = await vaultRequest<{ data: { min_available_version: number } }>(
        servers.vault,
        'GET',
        `transit/keys/${key}`,
      );
      expect(state.data.min_available_version).toBe(0);
    });
  });

  it('KMS ciphers: a new DEK opens again, moves to another KMS KEK inside KMS, a DEK under key bytes moves in; out of KMS into key bytes is refused, and a released cipher refuses use', async () => {
    await fresh();
    const store = kms();
    await generateKek(store, 'v1', { owner: KEYSPACE });
    await generateKek(store, 'v2', { owner: KEYSPACE });
    await rotatedOn(servers.db.pool, store);
    const { v1, v2, dek, wrapped } = await expectRemoteRoundTrip(keyringFor(servers.db.pool, store, KEYSPACE));

    const local = createTestKeys(['l1']);
    const localRing = keyringFor(servers.db.pool, local.provider, 'db-c/public.local', 'local');
    const l1 = await localRing.cipher('l1');
    const under = await l1.newDek('tenant-3');
    const movedIn = await l1.moveTo(v2, 'tenant-3', under.wrapped);
    expect((await v2.open('tenant-3', movedIn)).equals(under.dek)).toBe(true);
    await expect(v2.moveTo(l1, 'tenant-3', movedIn)).rejects.toThrow(KeyMaterialError);
    await expect(v2.moveTo(l1, 'tenant-3', movedIn)).rejects.toThrow('not out of it');

    v1.release();
    await expect(v1.open('tenant-1', wrapped)).rejects.toThrow(CipherReleasedError);
    await expect(v1.selfTest()).rejects.toThrow(CipherReleasedError);
    for (const cipher of [v2, l1]) cipher.release();
    for (const buffer of [dek, under.dek]) buffer.fill(0);
  });

  it('Transit ciphers: a new DEK opens again and moves to the next version inside Vault; a DEK under key bytes is refused, as is a released cipher', async () => {
    await fresh();
    const store = transit();
    await generateKek(store, 'v1');
    await generateKek(store, 'v2');
    await rotatedOn(servers.db.pool, store);
    const { v1, v2, dek } = await expectRemoteRoundTrip(keyringFor(servers.db.pool, store, KEYSPACE));

    const local = createTestKeys(['l1']);
    const l1 = await keyringFor(servers.db.pool, local.provider, 'db-c/public.local', 'local').cipher('l1');
    const under = await l1.newDek('tenant-3');
    await expect(l1.moveTo(v2, 'tenant-3', under.wrapped)).rejects.toThrow(KeyStoreRefusedError);

    v2.release();
    await expect(v2.newDek('tenant-1')).rejects.toThrow(CipherReleasedError);
    for (const cipher of [v1, l1]) cipher.release();
    for (const buffer of [dek, under.dek]) buffer.fill(0);
  });
});
