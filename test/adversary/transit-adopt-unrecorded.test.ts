// Adversary of the Transit owner record (issue 26, branch gaps3: "a key made before owner records is claimed by the
// first keyspace whose rotation starts with it"). KMS refuses to take an untagged key its registry does not record
// (another deployment may use it); Transit claims any key without a record, whoever asks first. A Transit key that
// deployment B has used since before owner records (B's registry holds v1 active; B has not rotated since) is claimed
// by deployment A's first rotation, which met the key that moment: A's registry recorded none of its versions. A then
// retires v1 and raises min_decryption_version past B's active KEK. Against the real Vault and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { useVaultAndDatabases } from '../helpers/vault';
import { deploymentWithDek, firstRotation, keyringFor } from '../helpers/keyring';
import { transitEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: a Transit key from before owner records, used by another deployment', () => {
  const servers = useVaultAndDatabases(2);

  it("a keyspace whose registry records none of a Transit key's versions does not claim the unrecorded key at its first rotation: keyspace B's v1 stays decryptable and B's DEK still opens", async () => {
    const { vault } = servers;
    const [dbA, dbB] = [servers.db(0), servers.db(1)];
    const key = `rekey-${randomUUID()}`;
    const env = transitEnv(vault.env, key);
    // Deployment B, from before owner records: the key made (no owner), B's registry holds v1 active, a DEK under it.
    const storeB = VaultTransitKeys.fromEnv(env);
    await generateKek(storeB, 'v1');
    const deploymentB = await deploymentWithDek(dbB.pool, storeB, 'v1');

    // Deployment A meets the key: its rotation's first step (adopt), the registry seeded from the key's current
    // version, then v2 provisioned and promoted, v1 retired.
    const storeA = VaultTransitKeys.fromEnv(env);
    await storeA.reload();
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    await expect(firstRotation(keyringA, dbA.pool, storeA, true)).rejects.toThrow();

    const state = await vaultRequest<{ data: { min_decryption_version: number } }>(vault, 'GET', `transit/keys/${key}`);
    expect(state.data.min_decryption_version).toBe(1);
    await deploymentB.stillOpens();
    keyringA.close();
  });
});
