// One owner rule for every store other deployments can reach (issue 24's finding 1, issue 26's adversary findings on
// Vault): a Transit key, a Vault KV secret or a Secrets Manager secret from before owner records is taken by a
// keyspace's rotation only when its registry records one of its keys; otherwise the rotation's first step (adopt) is
// refused with the command that claims it, and `rekey keys claim <id> --fingerprint <fp>` (the built CLI, as docs/06
// writes it) is the operator's explicit act that makes it the keyspace's. Against the real Vault, moto and PostgreSQL.
import { randomBytes, randomUUID } from 'node:crypto';
import { CreateSecretCommand, DescribeSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { awsClientConfig } from '../../src/keyring/aws';
import { SecretsManagerKeys } from '../../src/keyring/drivers/aws-secrets-manager';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { KeyMaterialError, KeyStoreRefusedError } from '../../src/errors';
import { runRekey } from '../helpers/cli';
import { pageFences } from '../helpers/doc-fences';
import { useMoto } from '../helpers/aws';
import { keyringFor } from '../helpers/keyring';
import { keyspaceIn } from '../helpers/keyspace';
import { fingerprintIn } from '../helpers/store-keys';
import { useVaultAndDatabases } from '../helpers/vault';
import { generateKek } from '../../src/keyring/keyring';

describe('rekey keys claim on the stores other deployments reach: Vault Transit, Vault KV, Secrets Manager', () => {
  const moto = useMoto();
  const servers = useVaultAndDatabases(2);

  /**
   * The claim command of docs/06-key-stores.md for a store (the block that contains `marker`), its placeholders filled
   * in with `values`: the arguments the test runs, so the command runs as the page writes it.
   */
  const documentedClaim = (marker: string, values: Record<string, string>): string[] => {
    const fence = pageFences('docs/06-key-stores.md').find(
      (f) => f.marker?.kind === 'elsewhere' && f.text.includes(marker),
    );
    expect(fence, `docs/06-key-stores.md has a claim block with ${marker}`).toBeDefined();
    let line = fence!.text.trim();
    for (const [placeholder, value] of Object.entries(values)) line = line.replaceAll(placeholder, value);
    expect(line).not.toMatch(/[<>]/);
    const [command, ...args] = line.split(/\s+/);
    expect(command).toBe('rekey');
    return args;
  };

  /** The CLI's environment: exactly what an operator sets, with DATABASE_URL naming the keyspace's database. */
  const cliEnv = (env: NodeJS.ProcessEnv, databaseUrl: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    ...env,
    DATABASE_URL: databaseUrl,
  });

  it("a Vault Transit key from before owner records: the rotation's first step is refused with the claim command, no record written; rekey keys claim (id and fingerprint) records the keyspace at secret/rekey/transit-keys/<mount>/<key>, and another keyspace's claim is refused (exit 5)", async () => {
    const key = `rekey-${randomUUID()}`;
    const env = { ...servers.vault.env, REKEY_KEY_PROVIDER: 'vault-transit', REKEY_VAULT_TRANSIT_KEY: key };
    const made = VaultTransitKeys.fromEnv(env);
    await generateKek(made, 'v1');
    const fingerprint = await fingerprintIn(made, 'v1');
    const keyspaceA = (await keyspaceIn(servers.db(0).pool)).id;
    const keyringA = keyringFor(servers.db(0).pool, VaultTransitKeys.fromEnv(env), keyspaceA);
    const record = `secret/data/rekey/transit-keys/transit/${key}`;

    await expect(keyringA.adopt()).rejects.toThrow(KeyStoreRefusedError);
    await expect(keyringA.adopt()).rejects.toThrow(`rekey keys claim v1 --fingerprint ${fingerprint}`);
    await expect(vaultRequest(servers.vault, 'GET', record)).rejects.toThrow();

    const wrong = await runRekey(
      ['keys', 'claim', 'v1', '--fingerprint', `${fingerprint}0`],
      cliEnv(env, servers.db(0).url),
    );
    expect(wrong.code, wrong.stderr).not.toBe(0);
    await expect(vaultRequest(servers.vault, 'GET', record)).rejects.toThrow();

    const documented = documentedClaim('vault-transit:', {
      'rekey-kek': key,
      '<creation time>': fingerprint.slice(fingerprint.lastIndexOf('@') + 1),
    });
    expect(documented).toEqual(['keys', 'claim', 'v1', '--fingerprint', fingerprint]);
    const claimed = await runRekey(documented, cliEnv(env, servers.db(0).url));
    expect(claimed.code, claimed.stderr).toBe(0);
    expect(claimed.stdout).toContain(`is keyspace ${keyspaceA}'s (target 'rekey')`);
    const written = await vaultRequest<{ data: { data: { keyspace: string } } }>(servers.vault, 'GET', record);
    expect(written.data.data.keyspace).toBe(keyspaceA);
    await keyringA.adopt();

    const other = await runRekey(['keys', 'claim', 'v1', '--fingerprint', fingerprint], cliEnv(env, servers.db(1).url));
    expect(other.code, other.stderr).toBe(5);
    expect(other.stderr).toContain(`records keyspace ${keyspaceA} as its owner`);
    keyringA.close();
    made.close();
  });

  it("a Vault KV secret from before owner records (vault kv put … value=…): the rotation's first step is refused with the claim command, no owner written; rekey keys claim kv-v1 records custom_metadata rekey:keyspace, and another keyspace's claim is refused (exit 5)", async () => {
    const path = `encryption/${randomUUID()}`;
    const env = { ...servers.vault.env, REKEY_KEY_PROVIDER: 'vault', REKEY_VAULT_KV_PATH: path };
    await vaultRequest(servers.vault, 'POST', `secret/data/${path}`, {
      data: { value: randomBytes(32).toString('base64url') },
    });
    const store = VaultKvKeys.fromEnv(env);
    await store.reload();
    const fingerprint = await fingerprintIn(store, 'kv-v1');
    const keyspaceA = (await keyspaceIn(servers.db(0).pool)).id;
    const keyringA = keyringFor(servers.db(0).pool, store, keyspaceA);
    const ownerOf = async () =>
      (
        await vaultRequest<{ data: { custom_metadata: Record<string, string> | null } }>(
          servers.vault,
          'GET',
          `secret/metadata/${path}`,
        )
      ).data.custom_metadata?.['rekey:keyspace'];

    await expect(keyringA.adopt()).rejects.toThrow(KeyStoreRefusedError);
    await expect(keyringA.adopt()).rejects.toThrow(`rekey keys claim kv-v1 --fingerprint ${fingerprint}`);
    expect(await ownerOf()).toBeUndefined();

    const documented = documentedClaim('kv-v1', { 'kcv1:<fingerprint>': fingerprint });
    expect(documented).toEqual(['keys', 'claim', 'kv-v1', '--fingerprint', fingerprint]);
    const claimed = await runRekey(documented, cliEnv(env, servers.db(0).url));
    expect(claimed.code, claimed.stderr).toBe(0);
    expect(await ownerOf()).toBe(keyspaceA);
    await keyringA.adopt();

    const other = await runRekey(
      ['keys', 'claim', 'kv-v1', '--fingerprint', fingerprint],
      cliEnv(env, servers.db(1).url),
    );
    expect(other.code, other.stderr).toBe(5);
    expect(await ownerOf()).toBe(keyspaceA);
    keyringA.close();
  });

  it("a Secrets Manager secret without its rekey:keyspace tag whose key the registry does not record: the rotation's first step is refused with the claim command, no tag written; rekey keys claim tags it, and another keyspace's claim is refused (exit 5)", async () => {
    const secretId = `rekey/${randomUUID()}`;
    const client = new SecretsManagerClient(awsClientConfig(moto.server.env, 'SECRETS_MANAGER'));
    const created = await client.send(
      new CreateSecretCommand({ Name: secretId, SecretString: randomBytes(32).toString('base64url') }),
    );
    const kekId = created.VersionId!;
    const env = { ...moto.server.env, REKEY_KEY_PROVIDER: 'aws-secrets-manager', REKEY_AWS_SECRET_ID: secretId };
    const store = SecretsManagerKeys.fromEnv(env);
    await store.reload();
    const fingerprint = await fingerprintIn(store, kekId);
    const keyspaceA = (await keyspaceIn(servers.db(0).pool)).id;
    const keyringA = keyringFor(servers.db(0).pool, store, keyspaceA);
    const tagOf = async () =>
      (await client.send(new DescribeSecretCommand({ SecretId: secretId }))).Tags?.find(
        (t) => t.Key === 'rekey:keyspace',
      )?.Value;

    await expect(keyringA.adopt()).rejects.toThrow(KeyStoreRefusedError);
    await expect(keyringA.adopt()).rejects.toThrow(`rekey keys claim ${kekId} --fingerprint ${fingerprint}`);
    expect(await tagOf()).toBeUndefined();

    const claimed = await runRekey(
      ['keys', 'claim', kekId, '--fingerprint', fingerprint],
      cliEnv(env, servers.db(0).url),
    );
    expect(claimed.code, claimed.stderr).toBe(0);
    expect(await tagOf()).toBe(keyspaceA);
    await keyringA.adopt();

    const other = await runRekey(
      ['keys', 'claim', kekId, '--fingerprint', fingerprint],
      cliEnv(env, servers.db(1).url),
    );
    expect(other.code, other.stderr).toBe(5);
    expect(await tagOf()).toBe(keyspaceA);
    keyringA.close();
    client.destroy();
  });

  // Last: it removes the KV mount the Transit tests above record owners in.
  it("a Transit key's owner record that Vault cannot serve (no KV v2 mount at secret/) stops the rotation's first step, saying which mount to enable and which path and capabilities to grant, whatever REKEY_VAULT_KV_MOUNT says", async () => {
    const key = `rekey-${randomUUID()}`;
    const otherKv = `kv-${randomUUID().slice(0, 8)}`;
    await vaultRequest(servers.vault, 'POST', `sys/mounts/${otherKv}`, { type: 'kv', options: { version: '2' } });
    const env = { ...servers.vault.env, REKEY_VAULT_TRANSIT_KEY: key, REKEY_VAULT_KV_MOUNT: otherKv };
    const made = VaultTransitKeys.fromEnv(env);
    await generateKek(made, 'v1');
    await vaultRequest(servers.vault, 'DELETE', 'sys/mounts/secret');
    const keyring = keyringFor(
      servers.db(0).pool,
      VaultTransitKeys.fromEnv(env),
      (await keyspaceIn(servers.db(0).pool)).id,
    );
    await expect(keyring.adopt()).rejects.toThrow(KeyMaterialError);
    await expect(keyring.adopt()).rejects.toThrow(
      `vault secrets enable -path=secret kv-v2, if none is there), and the worker's token needs "create" and "read" on secret/data/rekey/transit-keys/transit/${key}`,
    );
    keyring.close();
    made.close();
  });
});
