// The owner record of a Vault Transit key (issue 26's adversary finding: Transit recorded no owner). A Transit key has
// no metadata, so its owner is a KV v2 secret written once with check-and-set 0. Against the real Vault and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import {
  KekFingerprintMismatchError,
  KeyMaterialError,
  KeyspaceMismatchError,
  KeyStoreRefusedError,
} from '../../src/errors';
import { keyringFor, nothingNeeded, retiredWindowEnded, rotatedOn, rotatedRegistry } from '../helpers/keyring';
import { readmePolicy, tokenWithPolicy, useVaultAndDatabases } from '../helpers/vault';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

const KEYSPACE_A = 'db-a/public.tenant_deks';
const KEYSPACE_B = 'db-b/public.tenant_deks';

describe('the owner record of a Vault Transit key', () => {
  const servers = useVaultAndDatabases(2);

  const envFor = (key: string, extra: NodeJS.ProcessEnv = {}) => ({
    ...servers.vault.env,
    REKEY_VAULT_TRANSIT_KEY: key,
    REKEY_VAULT_TRANSIT_RATE: '0',
    ...extra,
  });
  const keyState = async (key: string) =>
    (
      await vaultRequest<{ data: { latest_version: number; min_decryption_version: number } }>(
        servers.vault,
        'GET',
        `transit/keys/${key}`,
      )
    ).data;
  const recordOf = async (key: string) =>
    (
      await vaultRequest<{ data: { data: { keyspace: string }; metadata: { version: number } } }>(
        servers.vault,
        'GET',
        `secret/data/rekey/transit-keys/transit/${key}`,
      )
    ).data;

  it('two keyspaces that claim one unrecorded key at the same moment: exactly one is recorded, and the other is refused a new version (KeyspaceMismatchError naming the owner), no version made', async () => {
    const key = `rekey-${randomUUID()}`;
    // A key made before owner records (no owner given), as existing deployments have.
    const made = VaultTransitKeys.fromEnv(envFor(key));
    await generateKek(made, 'v1');
    const [storeA, storeB] = [VaultTransitKeys.fromEnv(envFor(key)), VaultTransitKeys.fromEnv(envFor(key))];
    // Each registry records v1 (each application's first start seeded it): each may take the key, and one does.
    const recorded = [{ kekId: 'v1', fingerprint: await fingerprintIn(made, 'v1'), state: 'active' as const }];
    await Promise.all([storeA.adopt(KEYSPACE_A, recorded), storeB.adopt(KEYSPACE_B, recorded)]);
    const record = await recordOf(key);
    expect(record.metadata.version).toBe(1);
    const owner = record.data.keyspace;
    expect([KEYSPACE_A, KEYSPACE_B]).toContain(owner);
    const [loser, loserKeyspace] = owner === KEYSPACE_A ? [storeB, KEYSPACE_B] : [storeA, KEYSPACE_A];

    const refused = generateKek(loser, 'v2', { owner: loserKeyspace });
    await expect(refused).rejects.toThrow(KeyspaceMismatchError);
    await expect(generateKek(loser, 'v2', { owner: loserKeyspace })).rejects.toThrow(
      `records keyspace ${owner} as its owner`,
    );
    expect((await keyState(key)).latest_version).toBe(1);
    for (const store of [made, storeA, storeB]) store.close();
  });

  it('a keyspace that is not the recorded owner is refused restore (min_decryption_version is not lowered) and destroy (nothing trimmed), naming the owner', async () => {
    const key = `rekey-${randomUUID()}`;
    const owner = VaultTransitKeys.fromEnv(envFor(key));
    await generateKek(owner, 'v1', { owner: KEYSPACE_A });
    await generateKek(owner, 'v2', { owner: KEYSPACE_A });
    // The owner retired v1 in Vault; keyspace B's registry (another database) holds v1 retired too.
    const recordsA = await rotatedOn(servers.db(0).pool, owner);
    const registryB = await rotatedOn(servers.db(1).pool, owner);
    await owner.retire('v1', await recordsA.list());
    const other = VaultTransitKeys.fromEnv(envFor(key));
    await retiredWindowEnded(servers.db(1).pool, registryB);
    const keyringB = keyringFor(servers.db(1).pool, other, KEYSPACE_B);

    await expect(keyringB.restore('v1', 'a reader needs it', 'mallory')).rejects.toThrow(KeyspaceMismatchError);
    await expect(keyringB.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow(
      `records it as keyspace ${KEYSPACE_A}'s`,
    );
    expect(await keyState(key)).toMatchObject({ min_decryption_version: 2 });
    expect((await registryB.require('v1')).state).toBe('retired');
    keyringB.close();
    owner.close();
  });

  it('a key no keyspace has claimed is not retired (fail closed), neither at the store nor through the keyring, whose registry is left unwritten, saying how to claim it', async () => {
    const key = `rekey-${randomUUID()}`;
    const store = VaultTransitKeys.fromEnv(envFor(key));
    await generateKek(store, 'v1');
    await generateKek(store, 'v2');
    const records = [
      { kekId: 'v1', fingerprint: await fingerprintIn(store, 'v1'), state: 'retired' as const },
      { kekId: 'v2', fingerprint: await fingerprintIn(store, 'v2'), state: 'active' as const },
    ];
    await expect(store.retire('v1', records)).rejects.toThrow(KeyStoreRefusedError);
    await expect(store.retire('v1', records)).rejects.toThrow(/has no owner record .*rekey keys claim/);
    // Through the keyring (a rotation an older build started, retiring on this build): refused before the registry
    // is written, so registry and Vault stay as they were.
    const registry = await rotatedRegistry(servers.db(0).pool, 'unclaimed', {
      v1: await fingerprintIn(store, 'v1'),
      v2: await fingerprintIn(store, 'v2'),
    });
    const keyring = keyringFor(servers.db(0).pool, store, KEYSPACE_A, registry.target);
    await expect(keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded })).rejects.toThrow(
      KeyStoreRefusedError,
    );
    expect((await registry.require('v1')).state).toBe('decrypt_only');
    expect(await keyState(key)).toMatchObject({ min_decryption_version: 1 });
    keyring.close();
  });

  it('rekey keys claim records the keyspace on a Transit key made before owner records, only for the key its fingerprint names; another keyspace is then refused', async () => {
    const key = `rekey-${randomUUID()}`;
    const store = VaultTransitKeys.fromEnv(envFor(key));
    await generateKek(store, 'v1');
    const fingerprint = await fingerprintIn(store, 'v1');
    await expect(store.claimKey('v1', `${fingerprint}0`, KEYSPACE_A)).rejects.toThrow(KekFingerprintMismatchError);
    expect(await store.recordedOwner()).toBeUndefined();
    expect(await store.claimKey('v1', fingerprint, KEYSPACE_A)).toBe('claimed');
    expect(await store.claimKey('v1', fingerprint, KEYSPACE_A)).toBe('already');
    await expect(store.claimKey('v1', fingerprint, KEYSPACE_B)).rejects.toThrow(KeyspaceMismatchError);
    expect((await recordOf(key)).data.keyspace).toBe(KEYSPACE_A);
    store.close();
  });

  it("a token with a Transit-only policy (the documented policy without the owner record's path) is refused before anything is written, naming the record's path and capabilities", async () => {
    const key = `rekey-${randomUUID()}`;
    const policy = readmePolicy('vault-transit')
      .replace(/^# The key's owner record[^\n]*\npath "secret\/data\/[^"]*" \{[^}]*\}\n/m, '')
      .replaceAll('rekey-kek', key);
    expect(policy).not.toContain('secret/');
    const token = await tokenWithPolicy(servers.vault, `rekey-transit-only-${randomUUID()}`, policy);
    const store = VaultTransitKeys.fromEnv(envFor(key, { VAULT_TOKEN: token }));
    const keyring = keyringFor(servers.db(0).pool, store, KEYSPACE_A, `t${randomUUID().slice(0, 8)}`);
    const provision = keyring.provision('v1', { generate: true });
    await expect(provision).rejects.toThrow(KeyMaterialError);
    await expect(keyring.provision('v1', { generate: true })).rejects.toThrow(
      `lacks "create", "read" on "secret/data/rekey/transit-keys/transit/${key}"`,
    );
    const missing = await vaultRequest<unknown>(servers.vault, 'GET', `transit/keys/${key}`).catch((err: Error) => err);
    expect(missing).toBeInstanceOf(Error);
    keyring.close();
  });
});
