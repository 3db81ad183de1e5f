import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';
import { VaultHttp } from '../../src/keyring/vault-http';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { KeyMaterialError } from '../../src/errors';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** A KV store over `env` (the test's Vault and a secret of its own), its TLS warnings kept in `warnings`. */
function kvStore(env: Record<string, string>, warnings: string[] = []): VaultKvKeys {
  return new VaultKvKeys(
    VaultHttp.fromEnv(env, undefined, (message) => warnings.push(message)),
    'secret',
    `rekey/${randomUUID()}`,
  );
}

/** What Vault holds at the store's secret, read with the root token over the CA Vault wrote (undefined: nothing). */
async function written(vault: VaultServer, store: VaultKvKeys): Promise<unknown> {
  return vaultRequest(vault, 'GET', `secret/metadata/${store.path}`).catch((err: Error) =>
    /answered 404/.test(err.message) ? undefined : Promise.reject(err),
  );
}

describe('Vault over TLS: the TLS settings of Vault’s CLI (VAULT_CACERT, VAULT_CAPATH, VAULT_TLS_SERVER_NAME, VAULT_SKIP_VERIFY)', () => {
  let vault: VaultServer;
  beforeAll(async () => {
    vault = await startVault(inject('toolchain').vault, { tls: true });
  });
  afterAll(async () => {
    await vault?.stop();
  });

  it('with VAULT_CACERT naming the CA of `vault server -dev-tls`, the KV store writes a KEK and a fresh store reads the same key back', async () => {
    expect(vault.address).toMatch(/^https:\/\//);
    const store = kvStore(vault.env);
    await generateKek(store, 'v1');
    const again = new VaultKvKeys(VaultHttp.fromEnv(vault.env), 'secret', store.path);
    await again.reload();
    expect(await fingerprintIn(again, 'v1')).toBe(await fingerprintIn(store, 'v1'));
  });

  it('with VAULT_CAPATH naming the directory Vault wrote its CA to (and its own certificate and key), the KV store works', async () => {
    const { VAULT_CACERT: caCert, ...withoutCaCert } = vault.env;
    const store = kvStore({ ...withoutCaCert, VAULT_CAPATH: caCert!.replace(/\/[^/]+$/, '') });
    await generateKek(store, 'v1');
    expect(await written(vault, store)).toBeDefined();
  });

  it('Vault TLS settings not read: without VAULT_CACERT the connection to a Vault whose CA the system does not trust is refused, with an error that names VAULT_CACERT, and nothing is written', async () => {
    const { VAULT_CACERT: _ca, ...withoutCaCert } = vault.env;
    const store = kvStore(withoutCaCert);
    const refusal = await generateKek(store, 'v1').catch((err: unknown) => err);
    expect(refusal).toBeInstanceOf(KeyMaterialError);
    expect((refusal as Error).message).toContain(
      `Vault at ${vault.address} presented a certificate rekey cannot verify`,
    );
    expect((refusal as Error).message).toContain('VAULT_CACERT');
    expect(await written(vault, store)).toBeUndefined();
  });

  it('VAULT_TLS_SERVER_NAME is the name checked against Vault’s certificate: one it holds (localhost) works, another is refused naming VAULT_TLS_SERVER_NAME', async () => {
    await generateKek(kvStore({ ...vault.env, VAULT_TLS_SERVER_NAME: 'localhost' }), 'v1');
    const refusal = await generateKek(
      kvStore({ ...vault.env, VAULT_TLS_SERVER_NAME: 'vault.example.com' }),
      'v1',
    ).catch((err: unknown) => err);
    expect(refusal).toBeInstanceOf(KeyMaterialError);
    expect((refusal as Error).message).toContain('VAULT_TLS_SERVER_NAME');
  });

  it('VAULT_SKIP_VERIFY=true works without the CA and is logged as a warning saying what it exposes; a value Vault’s CLI would not parse is refused', async () => {
    const { VAULT_CACERT: _ca, ...withoutCaCert } = vault.env;
    const warnings: string[] = [];
    const store = kvStore({ ...withoutCaCert, VAULT_SKIP_VERIFY: 'true' }, warnings);
    await generateKek(store, 'v1');
    expect(await written(vault, store)).toBeDefined();
    expect(warnings).toEqual([
      expect.stringContaining(
        `VAULT_SKIP_VERIFY is set: rekey does not verify the certificate of Vault at ${vault.address}`,
      ),
    ]);
    // false, as Vault's CLI reads it, verifies.
    const verified = kvStore({ ...withoutCaCert, VAULT_SKIP_VERIFY: 'False' }, warnings);
    await expect(generateKek(verified, 'v1')).rejects.toThrow(/VAULT_CACERT/);
    expect(warnings).toHaveLength(1);
    expect(() => kvStore({ ...vault.env, VAULT_SKIP_VERIFY: 'yes' })).toThrow(
      /VAULT_SKIP_VERIFY must be true or false/,
    );
  });

  it('a client certificate needs its key, and a CA file that cannot be read is refused naming its variable', () => {
    expect(() => kvStore({ ...vault.env, VAULT_CLIENT_CERT: vault.caCert! })).toThrow(
      /VAULT_CLIENT_CERT and VAULT_CLIENT_KEY go together: VAULT_CLIENT_KEY is not set/,
    );
    expect(() => kvStore({ ...vault.env, VAULT_CACERT: '/nonexistent/ca.pem' })).toThrow(
      /VAULT_CACERT must name a PEM file .*'\/nonexistent\/ca.pem' cannot be read/,
    );
  });
});
