// Adversary of the keyring seam (issue 26) on issue 24's finding 1 for Vault Transit. Every other store rekey writes
// records its owner (the keyring file's owner, the tag rekey:keyspace of Secrets Manager and KMS, Vault KV's
// custom_metadata); Transit records none, and the other-registries check sees only the databases of this worker. Two
// deployments (two databases) whose REKEY_VAULT_TRANSIT_KEY name the same key share its versions: one's retire raises
// min_decryption_version past the version the other's rows are under, and its destroy trims it. Against the real Vault
// and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { useVaultAndDatabases } from '../helpers/vault';
import { deploymentWithDek, keyringFor, nothingNeeded, rotatedOn } from '../helpers/keyring';
import { transitEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: a Transit key two keyspaces of different databases use', () => {
  const servers = useVaultAndDatabases(2);

  it("Vault Transit records no owner: keyspace A's retire of v1 is refused while the key's v1 is keyspace B's active KEK (another database), and B's DEK under v1 still opens", async () => {
    const { vault } = servers;
    const [dbA, dbB] = [servers.db(0), servers.db(1)];
    const key = `rekey-${randomUUID()}`;
    const env = transitEnv(vault.env, key);
    // Keyspace A (database A) made the key; keyspace B (database B, another deployment) met it as its current KEK.
    const storeA = VaultTransitKeys.fromEnv(env);
    await generateKek(storeA, 'v1');
    const storeB = VaultTransitKeys.fromEnv(env);
    await storeB.reload();
    const deploymentB = await deploymentWithDek(dbB.pool, storeB, 'v1', {
      keyspace: 'db-b/public.tenant_deks',
      adopt: true,
    });

    // A rotates v1 → v2 and retires v1: its rows are all on v2.
    await generateKek(storeA, 'v2');
    const registryA = await rotatedOn(dbA.pool, storeA);
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    await keyringA.adopt();
    await expect(keyringA.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded })).rejects.toThrow();
    expect((await registryA.require('v1')).state).toBe('decrypt_only');

    const state = await vaultRequest<{ data: { min_decryption_version: number; min_available_version: number } }>(
      vault,
      'GET',
      `transit/keys/${key}`,
    );
    expect(state.data.min_decryption_version).toBe(1);
    await deploymentB.stillOpens();
    keyringA.close();
    deploymentB.keyring!.close();
  });
});
