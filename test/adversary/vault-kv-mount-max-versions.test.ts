// Adversary of the Vault KV v2 driver (issue 26) on issue 24's rule "nothing irreversible without proof". Vault keeps
// `max_versions` versions of a secret and destroys the oldest for good on the next write: the secret's own limit,
// else its mount's (`vault write <mount>/config max_versions=N`, a common hardening in Terraform modules), else 10.
// The driver reads only the secret's own limit and takes 0 for Vault's default of 10, so under a mount that keeps 2
// the next rotation's provision writes version 3 and Vault destroys version 1: a retired KEK inside its restore
// window, which no restore brings back. Against the real Vault and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { KekRegistry } from '../../src/store/kek-registry';
import { keyringFor, nothingNeeded } from '../helpers/keyring';
import { useVaultAndDatabase } from '../helpers/vault';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

const KEYSPACE = 'db-a/public.tenant_deks';
const HOUR = 3_600_000;

describe('adversary: a Vault KV v2 mount that keeps fewer versions than Vault’s default', () => {
  const servers = useVaultAndDatabase();

  it("a provision does not make Vault destroy a retired KEK's version inside its restore window when the mount (not the secret) sets max_versions: v1 restored afterwards still opens its DEK", async () => {
    const { vault, db } = servers;
    const mount = `kv-${randomUUID().slice(0, 8)}`;
    await vaultRequest(vault, 'POST', `sys/mounts/${mount}`, { type: 'kv', options: { version: '2' } });
    // The mount keeps two versions of each secret; the secret sets no limit of its own (max_versions 0).
    await vaultRequest(vault, 'POST', `${mount}/config`, { max_versions: 2 });
    const env = { ...vault.env, REKEY_VAULT_KV_MOUNT: mount, REKEY_VAULT_KV_PATH: 'encryption/master_key' };

    const store = VaultKvKeys.fromEnv(env);
    await generateKek(store, 'v1', { owner: KEYSPACE });
    const registry = new KekRegistry(db.pool, 'rekey');
    await registry.seedActive('v1', await fingerprintIn(store, 'v1'));
    const keyring = keyringFor(db.pool, store, KEYSPACE);
    const { dek, wrapped } = await keyring.withCiphers(['v1'], ([v1]) => v1!.newDek('tenant-1'));

    // The first rotation: v2 provisioned and promoted, v1 retired (soft-deleted) with an hour to be restored.
    await keyring.provision('v2', { generate: true });
    await keyring.promote('v1', 'v2');
    await keyring.retire('v1', { restoreWindowMs: HOUR, prove: nothingNeeded });
    expect((await registry.require('v1')).state).toBe('retired');

    // The next rotation's provision, inside v1's window: refused, or made without losing v1.
    await keyring.provision('v3', { generate: true }).catch(() => undefined);

    const versions = (
      await vaultRequest<{ data: { versions: Record<string, { destroyed: boolean }> } }>(
        vault,
        'GET',
        `${mount}/metadata/encryption/master_key`,
      )
    ).data.versions;
    expect(Object.keys(versions)).toContain('1');
    // Within its window the operator brings v1 back, and the DEK it wraps opens.
    await keyring.restore('v1', 'a tenant restored from an old backup', 'adversary');
    const opened = await keyring.withCiphers(['v1'], ([v1]) => v1!.open('tenant-1', wrapped));
    expect(opened.equals(dek)).toBe(true);
    for (const buffer of [dek, opened]) buffer.fill(0);
    keyring.close();
  });
});
