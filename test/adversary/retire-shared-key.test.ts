// Adversary of the keyring seam (issue 26) on issue 24's finding 1 and the house rule "before rekey destroys, disables
// or retires a key, it proves no keyspace sharing that store still needs it". Keyring.destroy asks the other registries;
// Keyring.retire does not, and a store's retire is not harmless to another keyspace: Transit raises the key's
// min_decryption_version and KMS disables the key, for every reader. Against the real Vault, moto and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { RetireRefusedError } from '../../src/errors';
import { KekRegistry } from '../../src/store/kek-registry';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { useMoto } from '../helpers/aws';
import {
  expectRetireRefusedWhileOrdersHoldsV1,
  keyringFor,
  kmsRotated,
  nothingNeeded,
  rotatedOn,
  TEST_KEYSPACE,
} from '../helpers/keyring';
import { useVaultAndDatabase } from '../helpers/vault';
import { transitEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: a keyring retires a KEK another keyspace’s registry still holds active', () => {
  const moto = useMoto();
  const servers = useVaultAndDatabase();
  const fresh = () => servers.db.pool.query('TRUNCATE rekey.kek_events, rekey.keks');

  it('Vault Transit: retire is refused while target orders holds v1 active, and orders’ DEK under v1 still opens (min_decryption_version is not raised past it)', async () => {
    await fresh();
    const key = `rekey-${randomUUID()}`;
    const env = transitEnv(servers.vault.env, key);
    const store = VaultTransitKeys.fromEnv(env);
    // Recorded as this keyspace's (a key no keyspace claimed is refused before the other-registries check is reached).
    await generateKek(store, 'v1', { owner: TEST_KEYSPACE });
    await generateKek(store, 'v2', { owner: TEST_KEYSPACE });
    const registry = await rotatedOn(servers.db.pool, store);
    // Another keyspace's registry (target orders, same database, so the keyring's other-registries check sees it)
    // holds v1 as its active KEK, and one of its tenants has a DEK under it.
    await expectRetireRefusedWhileOrdersHoldsV1(servers.db.pool, store, registry, VaultTransitKeys.fromEnv(env));
  });

  it('AWS KMS: retire is refused while target orders holds v1 active, and the key stays Enabled for orders’ DEKs (no DisableKey)', async () => {
    await fresh();
    const { env, store, registry } = await kmsRotated(servers.db.pool, moto.server.env);
    const orders = KmsKeys.fromEnv(env);
    await expectRetireRefusedWhileOrdersHoldsV1(servers.db.pool, store, registry, orders);
    orders.close();
    store.close();
  });

  it('AWS KMS: a registry of another keyspace that comes to hold v1 while the retire step proves its rows outside the lock (the pre-pass) refuses the retirement, and the key stays Enabled for its DEKs (no DisableKey)', async () => {
    await fresh();
    const { env, store, registry } = await kmsRotated(servers.db.pool, moto.server.env);
    const orders = KmsKeys.fromEnv(env);
    const made: { dek?: Buffer; wrapped?: Buffer } = {};
    try {
      const keyring = keyringFor(servers.db.pool, store, TEST_KEYSPACE);
      // The checks before the pre-pass pass: no other registry holds v1 yet. While the pre-pass runs (minutes to hours
      // on a large table), target orders's registry comes to hold v1 active (another surface's start, after a claim)
      // and orders wraps a tenant's DEK under it.
      const retired = keyring.retire('v1', {
        restoreWindowMs: 60_000,
        prepare: async () => {
          await new KekRegistry(servers.db.pool, 'orders').seedActive('v1', (await registry.require('v1')).fingerprint);
          await orders.reload();
          Object.assign(made, await orders.newDek('v1', 'orders-tenant'));
        },
        prove: nothingNeeded,
      });
      await expect(retired).rejects.toThrow(RetireRefusedError);
      expect((await registry.require('v1')).state).toBe('decrypt_only');
      await orders.reload();
      const opened = await orders.unwrapDek('v1', 'orders-tenant', made.wrapped!);
      expect(opened.equals(made.dek!)).toBe(true);
      opened.fill(0);
    } finally {
      made.dek?.fill(0);
      orders.close();
      store.close();
    }
  });
});
