// The lines the pages give in their prose for the operator's own tools (the AWS CLI, the `vault` CLI, psql, the
// `temporal` CLI and tctl), which no test ran: each is read from its page, made to fit this machine by the one helper
// (test/helpers/as-typed.ts: the servers through the variables the pages document, the placeholders filled) and run in
// bash as an operator types it, against moto, a Vault dev server, PostgreSQL and a Temporal dev server; then what the
// page says it does is checked.
import { randomBytes, randomUUID } from 'node:crypto';
import {
  CreateKeyCommand,
  DescribeKeyCommand,
  EnableKeyCommand,
  KMSClient,
  ScheduleKeyDeletionCommand,
} from '@aws-sdk/client-kms';
import { DescribeSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';
import { awsClientConfig } from '../../src/keyring/aws';
import { SecretsManagerKeys } from '../../src/keyring/drivers/aws-secrets-manager';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { generateKek } from '../../src/keyring/keyring';
import { KeyStoreRefusedError } from '../../src/errors';
import { KekRegistry } from '../../src/store/kek-registry';
import { useMoto } from '../helpers/aws';
import { runRekey } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyringFor } from '../helpers/keyring';
import { keyspaceIn } from '../helpers/keyspace';
import { fingerprintIn } from '../helpers/store-keys';
import { createDevServerEnv, type OwnServerEnvironment } from '../helpers/temporal';
import { asTyped, documentedLine, operatorEnv, runLine, type TestServers } from '../helpers/as-typed';

const STORES = 'docs/06-key-stores.md';

describe("the pages' lines for the AWS CLI, vault, psql, temporal and tctl, as written", () => {
  const moto = useMoto();
  let vault: VaultServer;
  let db: TestDatabase;
  let other: TestDatabase;
  let temporal: OwnServerEnvironment;
  beforeAll(async () => {
    [vault, db, other, temporal] = await Promise.all([
      startVault(inject('toolchain').vault),
      createTestDatabase(),
      createTestDatabase(),
      createDevServerEnv(),
    ]);
  }, 120_000);
  afterAll(async () => {
    await Promise.all([vault?.stop(), db?.drop(), other?.drop(), temporal?.teardown()]);
  });

  const servers = (): TestServers => ({
    aws: moto.server.env,
    vault: vault.env,
    databaseUrl: db.url,
    temporalAddress: temporal.address,
  });
  /** Runs a page's line, filled in, and expects it to exit 0; returns its output. */
  const run = async (line: string, fill: Record<string, string> = {}, env = operatorEnv(servers())) => {
    const typed = asTyped(line, fill, servers());
    const result = await runLine(typed, env);
    expect(result.code, `${typed}\n${result.stderr}`).toBe(0);
    return result.stdout;
  };

  it("Finding (docs/06, lines no test ran): the page's `aws secretsmanager create-secret …` and `update-secret-version-stage … --version-stage rekey-kek-v1 …` label a hand-made version that rekey then reads as KEK v1, with the fingerprint of $REKEY_KEK_v1", async () => {
    const kek = randomBytes(32).toString('base64url');
    const secretId = `rekey/${randomUUID()}`;
    const env = { ...operatorEnv(servers()), REKEY_KEK_v1: kek };
    const created = await run(
      documentedLine(STORES, 'aws secretsmanager create-secret --name <id> --secret-string "$REKEY_KEK_v1"'),
      { '<id>': secretId },
      env,
    );
    const versionId = (JSON.parse(created) as { VersionId: string }).VersionId;
    await run(
      documentedLine(
        STORES,
        'aws secretsmanager update-secret-version-stage --secret-id <id> --version-stage rekey-kek-v1 --move-to-version-id <VersionId>',
      ),
      { '<id>': secretId, '<VersionId>': versionId },
    );
    const client = new SecretsManagerClient(awsClientConfig(moto.server.env, 'SECRETS_MANAGER'));
    const described = await client.send(new DescribeSecretCommand({ SecretId: secretId }));
    expect(described.VersionIdsToStages?.[versionId]?.sort()).toEqual(['AWSCURRENT', 'rekey-kek-v1']);
    client.destroy();
    const store = SecretsManagerKeys.fromEnv({
      ...moto.server.env,
      REKEY_KEY_PROVIDER: 'aws-secrets-manager',
      REKEY_AWS_SECRET_ID: secretId,
    });
    await store.reload();
    const fromEnv = new EnvKeyProvider({ REKEY_KEK_v1: kek, REKEY_CURRENT_KEK_ID: 'v1' }, 'REKEY');
    expect(await fingerprintIn(store, 'v1')).toBe(await fingerprintIn(fromEnv, 'v1'));
    store.close();
  });

  it('Finding (docs/06 and docs/04, lines that fail as written): `aws kms cancel-key-deletion`, `aws kms disable-key` and `aws kms list-key-rotations` name the key they act on (--key-id), and run as written they stop a scheduled deletion, disable the key and list its rotations', async () => {
    const client = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
    const { KeyMetadata } = await client.send(new CreateKeyCommand({ Description: 'rekey docs test' }));
    // moto answers these calls with 500 given a key's ARN (docs/06 says so: rekey itself names the key by the key id
    // DescribeKey answers); AWS takes either in --key-id. So <recorded ARN> is filled with the key id here.
    const fill = { '<recorded ARN>': KeyMetadata!.KeyId!, '<key ARN>': KeyMetadata!.KeyId! };
    const state = async () =>
      (await client.send(new DescribeKeyCommand({ KeyId: KeyMetadata!.KeyId }))).KeyMetadata!.KeyState;

    await client.send(
      new ScheduleKeyDeletionCommand({
        KeyId: KeyMetadata!.KeyId,
        PendingWindowInDays: 7,
      }),
    );
    expect(await state()).toBe('PendingDeletion');
    await run(documentedLine(STORES, 'aws kms cancel-key-deletion --key-id <recorded ARN>'), fill);
    expect(await state()).toBe('Disabled');

    await client.send(new EnableKeyCommand({ KeyId: KeyMetadata!.KeyId }));
    await run(documentedLine(STORES, 'aws kms disable-key --key-id <recorded ARN>'), fill);
    expect(await state()).toBe('Disabled');

    const rotations = await run(
      documentedLine('docs/04-rotate-watch-pause-confirm.md', 'aws kms list-key-rotations --key-id <key ARN>'),
      fill,
    );
    expect(JSON.parse(rotations)).toHaveProperty('Rotations');
    client.destroy();
  });

  it("Finding (docs/06, a line no test ran): the page's `vault kv metadata put -max-versions=100 <mount>/<path>` raises the secret's kept versions to 100", async () => {
    const kvPath = `encryption/${randomUUID()}`;
    await vaultRequest(vault, 'POST', `secret/data/${kvPath}`, {
      data: { value: randomBytes(32).toString('base64url') },
    });
    await run(documentedLine(STORES, 'vault kv metadata put -max-versions=100 <mount>/<path>'), {
      '<mount>/<path>': `secret/${kvPath}`,
    });
    const metadata = await vaultRequest<{ data: { max_versions: number } }>(vault, 'GET', `secret/metadata/${kvPath}`);
    expect(metadata.data.max_versions).toBe(100);
  });

  it("Finding (docs/06, lines no test ran): a Transit key's owner record soft-deleted with `vault kv delete` refuses rekey's steps until the page's `vault kv undelete -versions=1 secret/rekey/transit-keys/transit/rekey-kek` brings it back (the page wrote `…`); `vault kv metadata delete secret/rekey/transit-keys/transit/rekey-kek` removes it, and the key is then claimed by another keyspace", async () => {
    const key = `rekey-${randomUUID()}`;
    const env = { ...vault.env, REKEY_KEY_PROVIDER: 'vault-transit', REKEY_VAULT_TRANSIT_KEY: key };
    const made = VaultTransitKeys.fromEnv(env);
    await generateKek(made, 'v1');
    const fingerprint = await fingerprintIn(made, 'v1');
    const record = `secret/rekey/transit-keys/transit/${key}`;
    const cli = (database: TestDatabase) => ({ PATH: process.env.PATH, ...env, DATABASE_URL: database.url });
    const claimed = await runRekey(['keys', 'claim', 'v1', '--fingerprint', fingerprint], cli(db));
    expect(claimed.code, claimed.stderr).toBe(0);
    const keyring = keyringFor(db.pool, VaultTransitKeys.fromEnv(env), (await keyspaceIn(db.pool)).id);
    await keyring.adopt();

    await run(`vault kv delete ${record}`);
    await expect(keyring.adopt()).rejects.toThrow(KeyStoreRefusedError);
    await run(documentedLine(STORES, 'vault kv undelete -versions=1 secret/rekey/transit-keys/transit/rekey-kek'), {
      'rekey-kek': key,
    });
    await keyring.adopt();

    const refused = await runRekey(['keys', 'claim', 'v1', '--fingerprint', fingerprint], cli(other));
    expect(refused.code, refused.stderr).toBe(5);
    await run(documentedLine(STORES, 'vault kv metadata delete secret/rekey/transit-keys/transit/rekey-kek'), {
      'rekey-kek': key,
    });
    const handed = await runRekey(['keys', 'claim', 'v1', '--fingerprint', fingerprint], cli(other));
    expect(handed.code, handed.stderr).toBe(0);
    expect(handed.stdout).toContain(`is keyspace ${(await keyspaceIn(other.pool)).id}'s`);
    keyring.close();
    made.close();
  });

  it("Finding (docs/06, a line no test ran): the page's psql line on rekey.kek_events reads KEK v1's audit trail of target 'rekey', in order, with each event's actor", async () => {
    const registry = new KekRegistry(db.pool, 'rekey');
    await registry.seedActive('v1', `kcv1:${randomBytes(8).toString('hex')}`, 'operator (docs test)');
    await registry.register('v2', `kcv1:${randomBytes(8).toString('hex')}`);
    await registry.promote('v1', 'v2');
    const out = await run(
      documentedLine(
        STORES,
        `psql "$DATABASE_URL" -c "SELECT event, reason, actor, at FROM rekey.kek_events WHERE target = 'rekey' AND kek_id = 'v1' ORDER BY id"`,
      ),
    );
    const rows = out.split('\n').filter((line) => /^\s*\w+\s*\|/.test(line) && !/^\s*event\s*\|/.test(line));
    expect(
      rows.map((line) => line.split('|').map((cell) => cell.trim())).map(([event, , actor]) => [event, actor]),
    ).toEqual([
      ['registered', 'operator (docs test)'],
      ['superseded', 'rekey (rotation step)'],
    ]);
  });

  it('Finding (docs/01, lines no test ran): `temporal operator namespace create --namespace <name>` and `tctl --namespace <name> namespace register` create the namespace, on the server TEMPORAL_ADDRESS (the temporal CLI) and TEMPORAL_CLI_ADDRESS (tctl) name', async () => {
    const page = 'docs/01-dev-server-or-cluster.md';
    const viaTemporal = `ns-${randomUUID().slice(0, 8)}`;
    const viaTctl = `ns-${randomUUID().slice(0, 8)}`;
    await run(documentedLine(page, 'temporal operator namespace create --namespace <name>'), { '<name>': viaTemporal });
    await run(documentedLine(page, 'tctl --namespace <name> namespace register'), { '<name>': viaTctl });
    for (const namespace of [viaTemporal, viaTctl]) {
      const described = await temporal.client.workflowService.describeNamespace({ namespace });
      expect(described.namespaceInfo?.name).toBe(namespace);
    }
  });
});
