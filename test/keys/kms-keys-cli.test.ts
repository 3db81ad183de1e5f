// `rekey keys generate` and `rekey keys claim` on AWS KMS (issue 26's adversary finding on issue 24's finding 2): a key
// is made with its keyspace's tag, a key under the prefix that no keyspace tagged and the registry does not record is
// refused at the rotation's first step with the command that claims it, and only that explicit claim makes it the
// keyspace's. The built CLI against moto and PostgreSQL.
import { randomUUID } from 'node:crypto';
import {
  CreateAliasCommand,
  CreateKeyCommand,
  KMSClient,
  ListAliasesCommand,
  ListResourceTagsCommand,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantCrypto } from '../../src/tenant-crypto';
import { KeyStoreRefusedError } from '../../src/errors';
import { runRekey } from '../helpers/cli';
import { useMoto } from '../helpers/aws';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyringFor } from '../helpers/keyring';
import { keyspaceIn } from '../helpers/keyspace';
import { fingerprintIn } from '../helpers/store-keys';

describe('rekey keys generate and keys claim on AWS KMS', () => {
  const moto = useMoto();
  let dbA: TestDatabase;
  let dbB: TestDatabase;
  let kms: KMSClient;
  beforeAll(async () => {
    [dbA, dbB] = await Promise.all([createTestDatabase(), createTestDatabase()]);
    kms = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
  });
  afterAll(async () => {
    kms.destroy();
    await Promise.all([dbA.drop(), dbB.drop()]);
  });

  const envFor = (prefix: string, databaseUrl?: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    ...moto.server.env,
    REKEY_KEY_PROVIDER: 'aws-kms',
    REKEY_AWS_KMS_ALIAS_PREFIX: prefix,
    REKEY_AWS_KMS_RATE: '0',
    ...(databaseUrl !== undefined && { DATABASE_URL: databaseUrl }),
  });
  const prefixFor = () => `alias/rekey-cli/${randomUUID()}/`;
  const aliasesUnder = async (prefix: string) =>
    ((await kms.send(new ListAliasesCommand({ Limit: 100 }))).Aliases ?? []).filter((a) =>
      a.AliasName?.startsWith(prefix),
    );
  const keyspaceTagOf = async (keyId: string) =>
    (await kms.send(new ListResourceTagsCommand({ KeyId: keyId }))).Tags?.find((t) => t.TagKey === 'rekey:keyspace')
      ?.TagValue;

  it('keys generate without DATABASE_URL is refused (exit 2), naming DATABASE_URL and --target, and creates no key', async () => {
    const prefix = prefixFor();
    const generated = await runRekey(['keys', 'generate'], envFor(prefix), 60_000);
    expect(generated.code, generated.stderr).toBe(2);
    expect(generated.stderr).toContain('set DATABASE_URL to that database, and --target (or REKEY_TARGET)');
    expect(await aliasesUnder(prefix)).toEqual([]);
  });

  it("keys generate tags the KMS key with the keyspace of --target in DATABASE_URL's database", async () => {
    const prefix = prefixFor();
    const generated = await runRekey(['--json', 'keys', 'generate', '--id', 'v1'], envFor(prefix, dbA.url), 60_000);
    expect(generated.code, generated.stderr).toBe(0);
    const printed = JSON.parse(generated.stdout) as { kekId: string; fingerprint: string; keyspace: string };
    const keyspace = (await keyspaceIn(dbA.pool)).id;
    expect(printed).toMatchObject({ kekId: 'v1', keyspace });
    const [alias] = (await aliasesUnder(prefix)).filter((a) => a.AliasName === `${prefix}kek-v1`);
    expect(await keyspaceTagOf(alias!.TargetKeyId!)).toBe(keyspace);
  });

  it("an untagged key under the prefix that the registry does not record refuses the rotation's first step with the claim command; keys claim (the key named by id and fingerprint) makes it the keyspace's, and another keyspace's claim of it is refused (exit 5)", async () => {
    const prefix = prefixFor();
    // A KEK made by hand (or by an earlier keys generate): no rekey:keyspace tag.
    const made = await kms.send(new CreateKeyCommand({ Description: 'made by hand' }));
    const { KeyId: keyId, Arn: arn } = made.KeyMetadata!;
    await kms.send(new CreateAliasCommand({ AliasName: `${prefix}kek-v1`, TargetKeyId: keyId }));
    await kms.send(new CreateAliasCommand({ AliasName: `${prefix}current`, TargetKeyId: keyId }));
    const keyspaceA = (await keyspaceIn(dbA.pool)).id;
    const store = KmsKeys.fromEnv(envFor(prefix));
    const keyring = keyringFor(dbA.pool, store, keyspaceA);

    await expect(keyring.adopt()).rejects.toThrow(KeyStoreRefusedError);
    await expect(keyring.adopt()).rejects.toThrow(`rekey keys claim v1 --fingerprint kms:${arn}`);
    expect(await keyspaceTagOf(keyId!)).toBeUndefined();

    // A claim that names another key is refused, and tags nothing.
    const wrongKey = await runRekey(
      ['keys', 'claim', 'v1', '--fingerprint', `kms:${arn!.replace(keyId!, randomUUID())}`],
      envFor(prefix, dbA.url),
      60_000,
    );
    expect(wrongKey.code, wrongKey.stderr).toBe(5);
    expect(await keyspaceTagOf(keyId!)).toBeUndefined();

    const claimed = await runRekey(
      ['keys', 'claim', 'v1', '--fingerprint', `kms:${arn}`],
      envFor(prefix, dbA.url),
      60_000,
    );
    expect(claimed.code, claimed.stderr).toBe(0);
    expect(claimed.stdout).toContain(`is keyspace ${keyspaceA}'s (target 'rekey')`);
    expect(await keyspaceTagOf(keyId!)).toBe(keyspaceA);
    await keyring.adopt();

    const other = await runRekey(
      ['keys', 'claim', 'v1', '--fingerprint', `kms:${arn}`],
      envFor(prefix, dbB.url),
      60_000,
    );
    expect(other.code, other.stderr).toBe(5);
    expect(other.stderr).toContain(`rekey:keyspace=${keyspaceA}, another keyspace's`);
    expect(await keyspaceTagOf(keyId!)).toBe(keyspaceA);
    keyring.close();
  });

  it("an application's first start does not seed its empty registry with an untagged KMS key under the prefix (another deployment's, made before keys were tagged): refused with the claim command, the registry left empty; a key tagged for its keyspace seeds it", async () => {
    const prefix = prefixFor();
    const made = await kms.send(new CreateKeyCommand({ Description: "another deployment's, untagged" }));
    await kms.send(new CreateAliasCommand({ AliasName: `${prefix}kek-v1`, TargetKeyId: made.KeyMetadata!.KeyId }));
    await kms.send(new CreateAliasCommand({ AliasName: `${prefix}current`, TargetKeyId: made.KeyMetadata!.KeyId }));
    const store = KmsKeys.fromEnv(envFor(prefix));
    await store.reload();
    const app = new TenantCrypto({ db: dbB.pool, keys: store, registryTtlMs: 60_000 });
    await expect(app.start()).rejects.toThrow(KeyStoreRefusedError);
    await expect(app.start()).rejects.toThrow(`rekey keys claim v1 --fingerprint kms:${made.KeyMetadata!.Arn}`);
    expect(await new KekRegistry(dbB.pool, 'rekey').list()).toEqual([]);
    await app.stop();
    store.close();

    // Another prefix whose key keys generate made for database B's keyspace: it seeds the registry.
    const own = prefixFor();
    const generated = await runRekey(['keys', 'generate', '--id', 'v1'], envFor(own, dbB.url), 60_000);
    expect(generated.code, generated.stderr).toBe(0);
    const ownStore = KmsKeys.fromEnv(envFor(own));
    await ownStore.reload();
    const ownApp = new TenantCrypto({ db: dbB.pool, keys: ownStore, registryTtlMs: 60_000 });
    await ownApp.start();
    expect((await new KekRegistry(dbB.pool, 'rekey').active())?.fingerprint).toBe(await fingerprintIn(ownStore, 'v1'));
    await ownApp.stop();
    ownStore.close();
  });
});
