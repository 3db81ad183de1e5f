// An application's first start (TenantCrypto) seeds an empty registry with the KEK its store names current. It asked
// only AWS KMS whether that key could be another keyspace's (refuseSeed); a Vault Transit key, a Vault KV secret or a
// Secrets Manager secret from before owner records, or one another keyspace owns, was taken as this keyspace's first
// KEK without a question, and the keyspace then wrapped its DEKs under another deployment's key. The owner rule now
// applies there as at a rotation's first step: the store's owner record must name this keyspace; a store without one
// is refused with the command that claims it. Against the Vault the setup builds, moto and PostgreSQL.
import { randomBytes, randomUUID } from 'node:crypto';
import { CreateSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { KeyspaceMismatchError, KeyStoreRefusedError } from '../../src/errors';
import { awsClientConfig } from '../../src/keyring/aws';
import type { StoreDriver } from '../../src/keyring/driver';
import { SecretsManagerKeys } from '../../src/keyring/drivers/aws-secrets-manager';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TenantCrypto } from '../../src/tenant-crypto';
import { useMoto } from '../helpers/aws';
import type { TestDatabase } from '../helpers/database';
import { keyspaceIn } from '../helpers/keyspace';
import { useVaultAndDatabases } from '../helpers/vault';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

describe("an application's first start seeds its registry only from a store whose owner record names its keyspace", () => {
  // Two databases (keyspaces A and B) for each store.
  const servers = useVaultAndDatabases(6);
  const moto = useMoto();

  const registryOf = (db: TestDatabase) => new KekRegistry(db.pool, BUILTIN_TARGET);

  /** Starts an application on `db` with `keys` (stopped again when it started). */
  async function start(db: TestDatabase, keys: StoreDriver): Promise<void> {
    await keys.reload();
    const app = new TenantCrypto({ db: db.pool, keys });
    await app.start();
    await app.stop();
  }

  /**
   * The rule on one store, from before owner records: A's first start refused with the claim command and its registry
   * left empty; claimed by id and fingerprint, A seeds; B's first start is refused as another keyspace's store.
   */
  async function ownerRuleAtFirstStart(
    pair: number,
    open: () => StoreDriver,
    kekId: string,
    fingerprint: string,
  ): Promise<void> {
    const [a, b] = [servers.db(2 * pair), servers.db(2 * pair + 1)];
    const keyspaceA = (await keyspaceIn(a.pool)).id;
    const first = open();
    try {
      const refused = await start(a, first).catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(KeyStoreRefusedError);
      expect((refused as Error).message).toContain(`rekey keys claim ${kekId} --fingerprint ${fingerprint}`);
      expect(await registryOf(a).list()).toEqual([]);

      await first.claimKey(kekId, fingerprint, keyspaceA);
      await start(a, first);
      expect(await registryOf(a).active()).toMatchObject({ kekId, fingerprint });
    } finally {
      first.close();
    }
    const other = open();
    try {
      const foreign = await start(b, other).catch((err: unknown) => err);
      expect(foreign).toBeInstanceOf(KeyspaceMismatchError);
      expect((foreign as Error).message).toContain(`records keyspace ${keyspaceA} as its owner`);
      expect(await registryOf(b).list()).toEqual([]);
    } finally {
      other.close();
    }
  }

  it('Finding: a Vault Transit key without an owner record is not taken as the first KEK of an application’s registry (refused with rekey keys claim), nor one another keyspace owns', async () => {
    const env = { ...servers.vault.env, REKEY_VAULT_TRANSIT_KEY: `rekey-${randomUUID()}` };
    const made = VaultTransitKeys.fromEnv(env);
    await generateKek(made, 'v1');
    const fingerprint = await fingerprintIn(made, 'v1');
    made.close();
    await ownerRuleAtFirstStart(0, () => VaultTransitKeys.fromEnv(env), 'v1', fingerprint);
  });

  it('Finding: a Vault KV secret written by hand (vault kv put … value=…) is not taken as the first KEK of an application’s registry (refused with rekey keys claim), nor one another keyspace owns', async () => {
    const path = `encryption/${randomUUID()}`;
    await vaultRequest(servers.vault, 'POST', `secret/data/${path}`, {
      data: { value: randomBytes(32).toString('base64url') },
    });
    const env = { ...servers.vault.env, REKEY_VAULT_KV_PATH: path };
    const read = VaultKvKeys.fromEnv(env);
    await read.reload();
    const fingerprint = await fingerprintIn(read, 'kv-v1');
    read.close();
    await ownerRuleAtFirstStart(1, () => VaultKvKeys.fromEnv(env), 'kv-v1', fingerprint);
  });

  it('Finding: a Secrets Manager secret without its rekey:keyspace tag is not taken as the first KEK of an application’s registry (refused with rekey keys claim), nor one another keyspace owns', async () => {
    const secretId = `rekey/${randomUUID()}`;
    const client = new SecretsManagerClient(awsClientConfig(moto.server.env, 'SECRETS_MANAGER'));
    const created = await client.send(
      new CreateSecretCommand({ Name: secretId, SecretString: randomBytes(32).toString('base64url') }),
    );
    client.destroy();
    const env = { ...moto.server.env, REKEY_AWS_SECRET_ID: secretId };
    const read = SecretsManagerKeys.fromEnv(env);
    await read.reload();
    const fingerprint = await fingerprintIn(read, created.VersionId!);
    read.close();
    await ownerRuleAtFirstStart(2, () => SecretsManagerKeys.fromEnv(env), created.VersionId!, fingerprint);
  });
});
