// Adversary of the owner records (issue 24's finding 1 on Vault KV v2, issue 26). A KV secret's owner is its
// custom_metadata rekey:keyspace, which the first keyspace whose rotation starts with it records (adopt), whatever its
// registry knows of the secret's keys. DevSkyy keeps its KEK at one default path (secret/encryption/master_key): two
// deployments on one Vault (staging and production, say) that both read it from before owner records share it, and
// the first to rotate takes it, retires the version both wrap with (a KV soft delete), and destroys it after its
// window. KMS refuses that case since gaps3 (an untagged key the registry does not record is claimed by the operator,
// never adopted); KV does not. Against the real Vault and PostgreSQL.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { useVaultAndDatabases } from '../helpers/vault';
import { deploymentWithDek, firstRotation, keyringFor } from '../helpers/keyring';

describe('adversary: a Vault KV secret from before owner records, read by two deployments', () => {
  const servers = useVaultAndDatabases(2);

  it("a keyspace whose registry records none of a secret's keys does not take the secret at its first rotation: the version keyspace B wraps with is not soft-deleted, and B's DEK still opens", async () => {
    const { vault } = servers;
    const [dbA, dbB] = [servers.db(0), servers.db(1)];
    const path = `encryption/${randomUUID()}`;
    const env = { ...vault.env, REKEY_VAULT_KV_PATH: path };
    // The secret as DevSkyy's operators made it (vault kv put … value=<KEK>), no rekey names, no owner.
    await vaultRequest(vault, 'POST', `secret/data/${path}`, {
      data: { value: randomBytes(32).toString('base64url') },
    });
    // Deployment B: its registry holds the key active, a DEK wrapped under it.
    const storeB = VaultKvKeys.fromEnv(env);
    await storeB.reload();
    const deploymentB = await deploymentWithDek(dbB.pool, storeB, storeB.configuredCurrent!, {
      keyspace: 'db-b/public.tenant_deks',
      dekThroughKeyring: true,
    });

    // Deployment A meets the secret: its rotation's first step (adopt), its registry seeded from the secret's current
    // KEK, a new KEK provisioned and promoted, the old one retired.
    const storeA = VaultKvKeys.fromEnv(env);
    await storeA.reload();
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    await expect(firstRotation(keyringA, dbA.pool, storeA, true)).rejects.toThrow();

    await deploymentB.stillOpens();
    keyringA.close();
    deploymentB.keyring!.close();
  });
});
