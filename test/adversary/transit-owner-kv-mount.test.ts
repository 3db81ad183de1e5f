// Adversary of the Transit owner record (issue 26, branch gaps3). A Transit key's owner is a KV v2 secret beside it,
// at `<REKEY_VAULT_KV_MOUNT>/rekey/transit-keys/<transit mount>/<key>`: its place depends on a setting of each
// deployment, not on the key. Two deployments that share one Transit key but whose REKEY_VAULT_KV_MOUNT differ (one
// keeps DevSkyy's KV secrets at secret/, the other at another mount) each find no record where they look, each claim
// the key, and each is its owner: A's retire raises min_decryption_version past the version B's registry holds active.
// Against the real Vault and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { useVaultAndDatabases } from '../helpers/vault';
import { deploymentWithDek, keyringFor, nothingNeeded, rotatedOn } from '../helpers/keyring';
import { transitEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: one Transit key, two deployments whose REKEY_VAULT_KV_MOUNT differ', () => {
  const servers = useVaultAndDatabases(2);

  it("one Transit key has one owner whatever each deployment's REKEY_VAULT_KV_MOUNT: keyspace A's retire of v1 is refused while v1 is keyspace B's active KEK, and B's DEK under v1 still opens", async () => {
    const { vault } = servers;
    const [dbA, dbB] = [servers.db(0), servers.db(1)];
    const key = `rekey-${randomUUID()}`;
    const otherKv = `kv-${randomUUID().slice(0, 8)}`;
    await vaultRequest(vault, 'POST', `sys/mounts/${otherKv}`, { type: 'kv', options: { version: '2' } });
    const envA = transitEnv(vault.env, key);
    const envB = { ...envA, REKEY_VAULT_KV_MOUNT: otherKv };

    // Keyspace B (database B) uses the key first: its rotation's first step records it as the key's owner.
    const storeB = VaultTransitKeys.fromEnv(envB);
    await generateKek(storeB, 'v1', { owner: 'db-b/public.tenant_deks' });
    const deploymentB = await deploymentWithDek(dbB.pool, storeB, 'v1', {
      keyspace: 'db-b/public.tenant_deks',
      adopt: true,
    });

    // Keyspace A (database A, the same Transit key) rotates v1 → v2 and retires v1.
    const storeA = VaultTransitKeys.fromEnv(envA);
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    const rotation = async () => {
      await keyringA.adopt();
      await storeA.reload();
      await generateKek(storeA, 'v2', { owner: 'db-a/public.tenant_deks' });
      await rotatedOn(dbA.pool, storeA);
      await keyringA.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded });
    };
    await expect(rotation()).rejects.toThrow();

    const state = await vaultRequest<{ data: { min_decryption_version: number } }>(vault, 'GET', `transit/keys/${key}`);
    expect(state.data.min_decryption_version).toBe(1);
    await deploymentB.stillOpens();
    keyringA.close();
    deploymentB.keyring!.close();
  });
});
