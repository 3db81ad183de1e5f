// Adversary of the keyring seam (issue 26) on issue 24's finding 1 and the house rule "before rekey destroys, disables
// or retires a key, it proves no keyspace sharing that store still needs it". Keyring.destroy asks the other registries;
// Keyring.retire does not, and a store's retire is not harmless to another keyspace: Transit raises the key's
// min_decryption_version and KMS disables the key, for every reader. Against the real Vault, moto and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startVault, type VaultServer } from '../../src/dev/vault';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { KekRegistry } from '../../src/store/kek-registry';
import { RetireRefusedError } from '../../src/errors';
import { useMoto } from '../helpers/aws';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyringFor, nothingNeeded, rotatedOn } from '../helpers/keyring';

const KEYSPACE = 'db-a/public.tenant_deks';

describe('adversary: a keyring retires a KEK another keyspace’s registry still holds active', () => {
  const moto = useMoto();
  let vault: VaultServer;
  let db: TestDatabase;
  beforeAll(async () => {
    [vault, db] = await Promise.all([startVault(inject('toolchain').vault), createTestDatabase()]);
  });
  afterAll(async () => {
    await Promise.all([vault.stop(), db.drop()]);
  });
  const fresh = () => db.pool.query('TRUNCATE rekey.kek_events, rekey.keks');

  it('Vault Transit: retire is refused while target orders holds v1 active, and orders’ DEK under v1 still opens (min_decryption_version is not raised past it)', async () => {
    await fresh();
    const key = `rekey-${randomUUID()}`;
    const env = { ...vault.env, REKEY_VAULT_TRANSIT_KEY: key, REKEY_VAULT_TRANSIT_RATE: '0' };
    const store = VaultTransitKeys.fromEnv(env);
    // Recorded as this keyspace's (a key no keyspace claimed is refused before the other-registries check is reached).
    await store.generate('v1', { owner: KEYSPACE });
    await store.generate('v2', { owner: KEYSPACE });
    const registry = await rotatedOn(db.pool, store);
    // Another keyspace's registry (target orders, same database, so the keyring's other-registries check sees it)
    // holds v1 as its active KEK, and one of its tenants has a DEK under it.
    await new KekRegistry(db.pool, 'orders').seedActive('v1', (await registry.require('v1')).fingerprint);
    const orders = VaultTransitKeys.fromEnv(env);
    await orders.reload();
    const { dek, wrapped } = await orders.newDek('v1', 'orders-tenant');

    const keyring = keyringFor(db.pool, store, KEYSPACE);
    await expect(keyring.retire('v1', { restoreWindowMs: 60_000, prove: nothingNeeded })).rejects.toThrow(
      RetireRefusedError,
    );

    await orders.reload();
    const opened = await orders.unwrapDek('v1', 'orders-tenant', wrapped);
    expect(opened.equals(dek)).toBe(true);
    expect((await registry.require('v1')).state).toBe('decrypt_only');
    for (const buffer of [dek, opened]) buffer.fill(0);
  });

  it('AWS KMS: retire is refused while target orders holds v1 active, and the key stays Enabled for orders’ DEKs (no DisableKey)', async () => {
    await fresh();
    const env = {
      ...moto.server.env,
      REKEY_AWS_KMS_ALIAS_PREFIX: `alias/rekey-adversary/${randomUUID()}/`,
      REKEY_AWS_KMS_RATE: '0',
    };
    const store = KmsKeys.fromEnv(env);
    await store.generate('v1', { owner: KEYSPACE });
    await store.generate('v2', { owner: KEYSPACE });
    const registry = await rotatedOn(db.pool, store);
    await new KekRegistry(db.pool, 'orders').seedActive('v1', (await registry.require('v1')).fingerprint);
    const orders = KmsKeys.fromEnv(env);
    await orders.reload();
    const { dek, wrapped } = await orders.newDek('v1', 'orders-tenant');

    const keyring = keyringFor(db.pool, store, KEYSPACE);
    await expect(keyring.retire('v1', { restoreWindowMs: 60_000, prove: nothingNeeded })).rejects.toThrow(
      RetireRefusedError,
    );

    await orders.reload();
    const opened = await orders.unwrapDek('v1', 'orders-tenant', wrapped);
    expect(opened.equals(dek)).toBe(true);
    expect((await registry.require('v1')).state).toBe('decrypt_only');
    for (const buffer of [dek, opened]) buffer.fill(0);
    orders.close();
    store.close();
  });
});
