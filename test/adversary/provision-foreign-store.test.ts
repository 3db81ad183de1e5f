// Adversary of the keyring's provision (issue 26: each step checks, then writes the registry, then calls the store's
// hook). Keyring.provision asks the store to make the new KEK first and checks the store's owner record afterwards:
// a keyspace whose Vault KV secret (or Secrets Manager secret) another keyspace owns writes a new version into that
// secret, names it there, and only then is refused. The other keyspace's store now holds a key its registry never
// recorded as its latest version, the one DevSkyy's application reads and wraps with. Against the real Vault and
// PostgreSQL.
import { describe, expect, it } from 'vitest';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { KeyspaceMismatchError } from '../../src/errors';
import { useVaultAndDatabases, vaultSecretOwnedBy } from '../helpers/vault';
import { keyringFor } from '../helpers/keyring';

describe("adversary: a provision into another keyspace's Vault KV secret", () => {
  const servers = useVaultAndDatabases(2);

  it("is refused before anything is written: the secret keyspace B owns gets no new version and no new name, and its latest version is still B's active KEK", async () => {
    const [dbA, dbB] = [servers.db(0), servers.db(1)];
    const { env, storeB, metadata } = await vaultSecretOwnedBy(servers.vault, dbB.pool, 'db-b/public.tenant_deks');
    const before = await metadata();

    // Keyspace A, configured with the same path by mistake, starts a rotation to a new KEK.
    const storeA = VaultKvKeys.fromEnv(env);
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    await expect(keyringA.provision('v2', { generate: true })).rejects.toThrow(KeyspaceMismatchError);

    const after = await metadata();
    expect(after.current_version).toBe(before.current_version);
    expect(after.custom_metadata).toEqual(before.custom_metadata);
    keyringA.close();
    storeB.close();
  });
});
