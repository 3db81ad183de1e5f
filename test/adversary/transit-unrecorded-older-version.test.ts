// Adversary of the Vault Transit driver (issue 26) on issue 24's rule "before rekey retires a key, it proves no row
// still needs it". Transit retires a prefix: raising min_decryption_version past vN stops every version up to N, and
// trim removes them all. The keyring proves only the rows labelled with the KEK it retires, and the driver checks only
// the versions the registry records. A keyspace met for the first time records the key's latest version alone (its
// configured current KEK), so a key rotated in Vault before rekey came (`vault write -f transit/keys/<key>/rotate`,
// Vault's own practice, which keeps old versions decryptable) has rows under v1 that no registry names: retiring v2
// stops v1 for them, unproved. Against the real Vault and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { KekRegistry } from '../../src/store/kek-registry';
import { keyringFor, nothingNeeded } from '../helpers/keyring';
import { useVaultAndDatabase } from '../helpers/vault';
import { fingerprintIn } from '../helpers/store-keys';
import { transitEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

const KEYSPACE = 'db-a/public.tenant_deks';

describe('adversary: a Transit key with a version older than any the registry records', () => {
  const servers = useVaultAndDatabase();

  it("retiring v2 does not stop v1, a version the registry never recorded that still wraps a DEK: the retire is refused (or leaves v1 decryptable), and v1's DEK still opens", async () => {
    const { vault, db } = servers;
    const key = `rekey-${randomUUID()}`;
    const env = transitEnv(vault.env, key);
    // Before rekey: the key made, a DEK wrapped under v1, the key rotated in Vault (v2 latest, v1 still decryptable).
    const store = VaultTransitKeys.fromEnv(env);
    await generateKek(store, 'v1', { owner: KEYSPACE });
    const { dek, wrapped } = await store.newDek('v1', 'tenant-old');
    await vaultRequest(vault, 'POST', `transit/keys/${key}/rotate`);
    await store.reload();
    expect(store.configuredCurrent).toBe('v2');

    // rekey meets the keyspace: its registry is seeded with the configured current KEK, v2 (as TenantCrypto.start and
    // validate do); a rotation v2 → v3 moves the rows labelled v2 and retires v2.
    const registry = new KekRegistry(db.pool, 'rekey');
    await registry.seedActive('v2', await fingerprintIn(store, 'v2'));
    const keyring = keyringFor(db.pool, store, KEYSPACE);
    await keyring.adopt();
    await keyring.provision('v3', { generate: true });
    await keyring.promote('v2', 'v3');
    await keyring.retire('v2', { restoreWindowMs: 3_600_000, prove: nothingNeeded }).catch(() => undefined);

    const state = await vaultRequest<{ data: { min_decryption_version: number } }>(vault, 'GET', `transit/keys/${key}`);
    expect(state.data.min_decryption_version).toBe(1);
    const reader = VaultTransitKeys.fromEnv(env);
    await reader.reload();
    const opened = await reader.unwrapDek('v1', 'tenant-old', wrapped);
    expect(opened.equals(dek)).toBe(true);
    for (const buffer of [dek, opened]) buffer.fill(0);
    keyring.close();
    reader.close();
  });
});
