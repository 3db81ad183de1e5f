// Adversary of REKEY_KEY_PROVIDER=auto once each driver registers its own detection (keyring5: a driver file holds its
// config value, its environment and its `auto` test). The order is DevSkyy's (../shared/seed-systems.md): AWS when
// AWS_REGION or AWS_DEFAULT_REGION is set, else Vault when VAULT_ADDR is set, else the keyring file. An order that
// follows the order the driver files happen to be loaded in, a second driver that also answers to AWS_REGION (KMS) or
// to VAULT_ADDR (Transit), or the keyring file taken because REKEY_KEYRING_FILE is set, puts the operator's new KEK
// into a store the application does not read: its DEKs are wrapped under a key the fleet never loads. Through the
// built CLI as an operator runs it, against moto, the Vault the setup builds and a keyring file; what each store holds
// afterwards is read from the store itself, not from rekey's answer.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DescribeSecretCommand, ListSecretsCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { ListAliasesCommand, KMSClient } from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { awsClientConfig } from '../../src/keyring/aws';
import { useMoto } from '../helpers/aws';
import { runRekey } from '../helpers/cli';
import { useScratchDirectory } from '../helpers/database';
import { useVaultAndDatabase } from '../helpers/vault';

describe('adversary: REKEY_KEY_PROVIDER=auto with more than one store configured', () => {
  const servers = useVaultAndDatabase();
  const moto = useMoto();
  const scratch = useScratchDirectory('rekey-auto-');

  /** Every store configured at once: a Secrets Manager secret, a Vault KV secret, a keyring file (none exists yet). */
  function everyStore() {
    const id = randomUUID();
    return {
      secretId: `rekey/auto-${id}`,
      kvPath: `rekey/auto-${id}`,
      keyringFile: path.join(scratch.dir, `keyring-${id}.json`),
    };
  }

  async function secretsManagerVersions(secretId: string): Promise<number> {
    const client = new SecretsManagerClient(awsClientConfig(moto.server.env, 'SECRETS_MANAGER'));
    try {
      const listed = await client.send(new ListSecretsCommand({ Filters: [{ Key: 'name', Values: [secretId] }] }));
      if (!(listed.SecretList ?? []).some((s) => s.Name === secretId)) return 0;
      const described = await client.send(new DescribeSecretCommand({ SecretId: secretId }));
      return Object.keys(described.VersionIdsToStages ?? {}).length;
    } finally {
      client.destroy();
    }
  }

  async function kmsAliases(): Promise<string[]> {
    const client = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
    try {
      const { Aliases } = await client.send(new ListAliasesCommand({}));
      return (Aliases ?? []).map((a) => a.AliasName ?? '').filter((name) => name.startsWith('alias/rekey/'));
    } finally {
      client.destroy();
    }
  }

  async function vaultVersions(kvPath: string): Promise<number> {
    try {
      const metadata = await vaultRequest<{ data: { versions: Record<string, unknown> } }>(
        servers.vault,
        'GET',
        `secret/metadata/${kvPath}`,
      );
      return Object.keys(metadata.data.versions).length;
    } catch (err) {
      if (/answered 404/.test(String(err))) return 0;
      throw err;
    }
  }

  const generate = (env: NodeJS.ProcessEnv, id: string) =>
    runRekey(['keys', 'generate', '--id', id], {
      PATH: process.env.PATH,
      REKEY_KEY_PROVIDER: 'auto',
      ...env,
    });

  it('with AWS_REGION, VAULT_ADDR and REKEY_KEYRING_FILE all set, rekey keys generate writes the KEK into the Secrets Manager secret, and nothing into Vault, KMS or the keyring file', async () => {
    const { secretId, kvPath, keyringFile } = everyStore();
    const aliases = await kmsAliases();
    const generated = await generate(
      {
        ...moto.server.env,
        REKEY_AWS_SECRET_ID: secretId,
        ...servers.vault.env,
        REKEY_VAULT_KV_PATH: kvPath,
        REKEY_VAULT_TRANSIT_KEY: `auto-${randomUUID()}`,
        REKEY_KEYRING_FILE: keyringFile,
      },
      'v1',
    );
    expect(generated.code, generated.stdout + generated.stderr).toBe(0);
    expect(await secretsManagerVersions(secretId)).toBe(1);
    expect(await vaultVersions(kvPath)).toBe(0);
    expect(fs.existsSync(keyringFile)).toBe(false);
    expect(await kmsAliases()).toEqual(aliases);
  });

  it('with AWS_DEFAULT_REGION (no AWS_REGION) and VAULT_ADDR set, rekey keys generate writes into the Secrets Manager secret, not into Vault', async () => {
    const { secretId, kvPath, keyringFile } = everyStore();
    const { AWS_REGION: region, ...aws } = moto.server.env;
    const generated = await generate(
      {
        ...aws,
        AWS_DEFAULT_REGION: region,
        REKEY_AWS_SECRET_ID: secretId,
        ...servers.vault.env,
        REKEY_VAULT_KV_PATH: kvPath,
        REKEY_KEYRING_FILE: keyringFile,
      },
      'v1',
    );
    expect(generated.code, generated.stdout + generated.stderr).toBe(0);
    expect(await secretsManagerVersions(secretId)).toBe(1);
    expect(await vaultVersions(kvPath)).toBe(0);
    expect(fs.existsSync(keyringFile)).toBe(false);
  });

  it('with VAULT_ADDR and REKEY_KEYRING_FILE set (no AWS region), rekey keys generate writes the KEK into the Vault KV secret, and the keyring file is not made', async () => {
    const { kvPath, keyringFile } = everyStore();
    const generated = await generate(
      {
        ...servers.vault.env,
        REKEY_VAULT_KV_PATH: kvPath,
        REKEY_VAULT_TRANSIT_KEY: `auto-${randomUUID()}`,
        REKEY_KEYRING_FILE: keyringFile,
      },
      'v1',
    );
    expect(generated.code, generated.stdout + generated.stderr).toBe(0);
    expect(await vaultVersions(kvPath)).toBe(1);
    expect(fs.existsSync(keyringFile)).toBe(false);
  });

  it('with only REKEY_KEYRING_FILE set, rekey keys generate writes the KEK into the keyring file', async () => {
    const { keyringFile } = everyStore();
    const generated = await generate({ REKEY_KEYRING_FILE: keyringFile }, 'v1');
    expect(generated.code, generated.stdout + generated.stderr).toBe(0);
    expect(fs.existsSync(keyringFile)).toBe(true);
  });
});
