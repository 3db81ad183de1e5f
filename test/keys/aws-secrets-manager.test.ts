import { randomBytes, randomUUID } from 'node:crypto';
import {
  CreateSecretCommand,
  DescribeSecretCommand,
  GetSecretValueCommand,
  ListSecretVersionIdsCommand,
  SecretsManagerClient,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import { describe, expect, it } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { dekFingerprints, seedTenants, tenantIdFor } from '../../src/dev/tenants';
import { awsClientConfig } from '../../src/keyring/aws';
import { SecretsManagerKeys, versionToken } from '../../src/keyring/drivers/aws-secrets-manager';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { detectKeyStore, openStoreDriver } from '../../src/keyring/open';
import { resolveKek, unwrapUnder, wrapUnder, fingerprintIn, storedIds } from '../helpers/store-keys';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { restoreKek } from '../../src/targets/restore-kek';
import { inTransaction } from '../../src/store/connect';
import { KekRetiredError, KeyMaterialError, KeyspaceMismatchError } from '../../src/errors';
import { runRekey } from '../helpers/cli';
import { createTestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { loseFirstAnswer, throttlingProxy, useAwsServers } from '../helpers/aws';
import { runRotation } from '../helpers/rotation-run';
import { destroyedAfterWindow, rotateUnderLiveWriter, seededKeyspace } from '../helpers/store-rotation';
import { generateKek } from '../../src/keyring/keyring';

const TENANTS = 2_000;

/** The versions of a secret as moto lists them: id and stages. */
async function versionsOf(client: SecretsManagerClient, secretId: string) {
  const listed = await client.send(new ListSecretVersionIdsCommand({ SecretId: secretId, IncludeDeprecated: true }));
  return (listed.Versions ?? []).map((v) => ({ id: v.VersionId!, stages: [...(v.VersionStages ?? [])].sort() }));
}

describe('aws-secrets-manager key provider against a moto server', () => {
  const aws = useAwsServers((env) => new SecretsManagerClient(awsClientConfig(env, 'SECRETS_MANAGER')));
  const { moto, temporal } = aws;

  /** A keyspace of its own in the shared database: a fresh secret holding v1 (AWSCURRENT), tenants wrapped by it. */
  async function keyspace(env: Record<string, string> = moto.server.env) {
    const secretId = `rekey/${randomUUID()}`;
    const keys = SecretsManagerKeys.fromEnv({ ...env, REKEY_AWS_SECRET_ID: secretId });
    return { secretId, keys, before: await seededKeyspace(aws.db.pool, keys, TENANTS) };
  }

  const rotate = async (activities: Activities, request: RotationRequest) =>
    (await runRotation(temporal.env, activities, aws.db.pool, request, { timeoutMs: 90_000 })).report;

  it('a full rotation to a new KEK: provisioned as AWSPENDING, promoted to AWSCURRENT, the old one retired under a rekey label; a live writer reads and writes throughout, and every DEK unwraps from a fresh read of the store', async () => {
    const { secretId, keys, before } = await keyspace();
    // The application: another process, with its own view of the same secret.
    const appKeys = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    await appKeys.reload();
    const rotation = { tenantAt: (n: number) => tenantIdFor('tenant-', n % TENANTS), timeoutMs: 90_000 };
    try {
      await rotateUnderLiveWriter({ env: temporal.env, db: aws.db.pool }, { keys, appKeys }, rotation, async () => {
        const versions = await versionsOf(aws.client, secretId);
        expect(versions).toHaveLength(2);
        expect(versions).toContainEqual({ id: versionToken(secretId, 'v2'), stages: ['AWSCURRENT', 'rekey-kek-v2'] });
        expect(versions.find((v) => v.id !== versionToken(secretId, 'v2'))?.stages).toEqual(['rekey-retired-v1']);
        const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
        expect((await registry.get('v1'))?.state).toBe('retired');
        expect((await registry.get('v2'))?.state).toBe('active');
        const { rows } = await aws.db.pool.query<{ kek_id: string; n: string }>(
          'SELECT kek_id, count(*) AS n FROM rekey.tenant_deks GROUP BY kek_id',
        );
        expect(rows.map((r) => r.kek_id)).toEqual(['v2']);

        // Every DEK, read with keys fetched afresh from the store, is byte-identical to before the rotation.
        const fresh = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
        await fresh.reload();
        expect(await fingerprintIn(fresh, 'v2')).toBe((await registry.get('v2'))?.fingerprint);
        const after = await dekFingerprints(aws.db.pool, fresh);
        for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);
        fresh.close();

        // moto still serves v1's material (as AWS would until the version is destroyed): the registry refuses it.
        const served = await aws.client.send(
          new GetSecretValueCommand({ SecretId: secretId, VersionStage: 'rekey-retired-v1' }),
        );
        expect(served.SecretString).toHaveLength(43);
        await keys.reload();
        expect((await storedIds(keys)).includes('v1')).toBe(true);
        const v1Record = await registry.get('v1');
        await expect(resolveKek(keys, 'v1', v1Record)).rejects.toThrow(KekRetiredError);

        // Within its window (30 days by default) v1 is restored: decrypt-only in the registry, named again in the store.
        const runtime = await new TargetRuntimes({ db: aws.db.pool, keys }).get();
        await restoreKek(runtime, 'v1', 'an old replica still reads v1', 'bob');
        expect((await registry.get('v1'))?.state).toBe('decrypt_only');
        expect(
          (await versionsOf(aws.client, secretId)).find((v) => v.id !== versionToken(secretId, 'v2'))?.stages,
        ).toEqual(['rekey-kek-v1']);
        (await resolveKek(keys, 'v1', await registry.get('v1'))).key.fill(0);
      });
    } finally {
      appKeys.close();
      keys.close();
    }
  });

  it('after its restore window the retired version loses every label (deprecated: AWS deletes it in its own time), the registry says destroyed, and a restore is refused', async () => {
    const { secretId, keys } = await keyspace();
    try {
      const servers = { env: temporal.env, db: aws.db.pool };
      await destroyedAfterWindow(
        servers,
        keys,
        { detail: /has no label left: deprecated/, timeoutMs: 90_000 },
        async () => {
          const versions = await versionsOf(aws.client, secretId);
          expect(versions.find((v) => v.id !== versionToken(secretId, 'v2'))?.stages).toEqual([]);
          await keys.reload();
          expect((await storedIds(keys)).includes('v1')).toBe(false);
        },
      );
    } finally {
      keys.close();
    }
  });

  /**
   * A secret as a person or DevSkyy's tooling makes it: one version holding a KEK, AWSCURRENT and no rekey label (its
   * KEK id is its VersionId), seeded as the registry's active KEK with a few tenants wrapped by it.
   */
  async function handMadeSecret() {
    const secretId = `rekey/${randomUUID()}`;
    const created = await aws.client.send(
      new CreateSecretCommand({ Name: secretId, SecretString: randomBytes(32).toString('base64url') }),
    );
    const handMade = created.VersionId!;
    const keys = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    await keys.reload();
    expect(await storedIds(keys)).toEqual([handMade]);
    await aws.db.pool.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
    await new KekRegistry(aws.db.pool, BUILTIN_TARGET).seedActive(handMade, await fingerprintIn(keys, handMade));
    await seedTenants({ db: aws.db.pool, keys, kekId: handMade, count: 50 });
    const stagesOf = async (versionId: string) =>
      (await versionsOf(aws.client, secretId)).find((v) => v.id === versionId)?.stages;
    return { secretId, handMade, keys, stagesOf, before: await dekFingerprints(aws.db.pool, keys) };
  }

  it('finding 3: a hand-made AWSCURRENT version without a rekey label is labelled rekey-kek-<VersionId> before anything moves, so the promotion leaves it a label: a fresh read still holds it and every DEK unwraps, and the next AWSCURRENT move leaves every version the registry needs labelled', async () => {
    const { secretId, handMade, keys, stagesOf, before } = await handMadeSecret();
    const activities = createActivities({ db: aws.db.pool, keys });
    const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
    const fresh = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    try {
      await activities.provisionKek({ kekId: 'v2', generate: true, from: handMade });
      await activities.promoteKek({ from: handMade, to: 'v2' });
      // Today's code left it AWSPREVIOUS alone: not listed, KekNotHeldError for every slice and every restarted app.
      expect(await stagesOf(handMade)).toEqual(['AWSPREVIOUS', `rekey-kek-${handMade}`]);
      await fresh.reload();
      (await resolveKek(fresh, handMade, await registry.get(handMade))).key.fill(0);
      const after = await dekFingerprints(aws.db.pool, fresh);
      for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);

      // The next AWSCURRENT move takes AWSPREVIOUS from the hand-made version (AWS moves it to v2): its label stays.
      await activities.provisionKek({ kekId: 'v3', generate: true, from: 'v2' });
      await activities.promoteKek({ from: 'v2', to: 'v3' });
      expect(await stagesOf(handMade)).toEqual([`rekey-kek-${handMade}`]);
      const versions = await versionsOf(aws.client, secretId);
      for (const kek of await registry.list()) {
        const versionId = kek.kekId === handMade ? handMade : versionToken(secretId, kek.kekId);
        const labels = versions.find((v) => v.id === versionId)?.stages ?? [];
        expect(labels, `KEK '${kek.kekId}' (${kek.state})`).toContain(`rekey-kek-${kek.kekId}`);
      }
      await fresh.reload();
      expect((await storedIds(fresh)).sort()).toEqual([handMade, 'v2', 'v3'].sort());
      const still = await dekFingerprints(aws.db.pool, fresh);
      for (const [tenantId, fingerprint] of before) expect(still.get(tenantId)).toBe(fingerprint);
    } finally {
      fresh.close();
      keys.close();
    }
  });

  it('a version an earlier build’s promotion left with only AWSPREVIOUS is read again under its VersionId (its rows unwrap), and the next provision labels it before anything moves', async () => {
    const { secretId, handMade, keys, stagesOf, before } = await handMadeSecret();
    const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
    const fresh = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    try {
      // What the earlier build did: v2 stored as AWSPENDING, then AWSCURRENT moved to it (AWS moves AWSPREVIOUS).
      await generateKek(keys, 'v2');
      const v2 = versionToken(secretId, 'v2');
      await aws.client.send(
        new UpdateSecretVersionStageCommand({
          SecretId: secretId,
          VersionStage: 'AWSCURRENT',
          MoveToVersionId: v2,
          RemoveFromVersionId: handMade,
        }),
      );
      await aws.client.send(
        new UpdateSecretVersionStageCommand({
          SecretId: secretId,
          VersionStage: 'AWSPENDING',
          RemoveFromVersionId: v2,
        }),
      );
      await registry.register('v2', await fingerprintIn(keys, 'v2'));
      await registry.promote(handMade, 'v2');
      expect(await stagesOf(handMade)).toEqual(['AWSPREVIOUS']);

      await fresh.reload();
      expect((await storedIds(fresh)).includes(handMade)).toBe(true);
      (await resolveKek(fresh, handMade, await registry.get(handMade))).key.fill(0);
      const after = await dekFingerprints(aws.db.pool, fresh);
      for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);

      await createActivities({ db: aws.db.pool, keys }).provisionKek({ kekId: 'v3', generate: true, from: 'v2' });
      expect(await stagesOf(handMade)).toEqual(['AWSPREVIOUS', `rekey-kek-${handMade}`]);
    } finally {
      fresh.close();
      keys.close();
    }
  });

  it('a provision whose answer was lost after AWS stored the value is retried by Temporal and creates one version, the one registered', async () => {
    const { secretId, keys } = await keyspace();
    const lossy = new SecretsManagerClient(awsClientConfig(moto.server.env, 'SECRETS_MANAGER'));
    const losing = loseFirstAnswer(lossy, 'PutSecretValue');
    const lossyKeys = new SecretsManagerKeys(secretId, lossy);
    try {
      const report = await rotate(createActivities({ db: aws.db.pool, keys: lossyKeys }), {
        from: 'v1',
        to: 'new',
        gracePeriod: '1d',
        fleetLiveWithin: '1h',
      });
      expect(losing.lost).toBe(1);
      expect(report.outcome).toBe('completed');
      const versions = await versionsOf(aws.client, secretId);
      expect(versions).toHaveLength(2);
      const stored = await aws.client.send(
        new GetSecretValueCommand({ SecretId: secretId, VersionStage: 'AWSCURRENT' }),
      );
      expect(stored.VersionId).toBe(versionToken(secretId, 'v2'));
      await keys.reload();
      expect((await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v2'))?.fingerprint).toBe(
        await fingerprintIn(keys, 'v2'),
      );
    } finally {
      lossyKeys.close();
      keys.close();
    }
  });

  it('a rotation whose every other AWS call is throttled rides it out with the SDK backoff and completes', async () => {
    const proxy = await throttlingProxy(moto.server.endpoint, 2);
    const { keys, before } = await keyspace({ ...moto.server.env, AWS_ENDPOINT_URL: proxy.endpoint });
    try {
      const report = await rotate(createActivities({ db: aws.db.pool, keys }), {
        from: 'v1',
        to: 'new',
        gracePeriod: '1d',
        fleetLiveWithin: '1h',
      });
      expect(report.outcome).toBe('completed');
      expect(proxy.throttled).toBeGreaterThan(5);
      expect(proxy.forwarded.get('PutSecretValue')).toBe(1);
      expect(proxy.forwarded.get('UpdateSecretVersionStage')).toBeGreaterThan(0);
      const after = await dekFingerprints(aws.db.pool, keys);
      for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);
    } finally {
      keys.close();
      await proxy.close();
    }
  });

  it('REKEY_KEY_PROVIDER=auto picks Secrets Manager from AWS_REGION or AWS_DEFAULT_REGION, then Vault KV from VAULT_ADDR, else the file keyring', () => {
    expect(detectKeyStore({ AWS_REGION: 'eu-west-1', VAULT_ADDR: 'http://vault:8200' })).toEqual({
      provider: 'aws-secrets-manager',
      why: 'AWS_REGION is set',
    });
    expect(detectKeyStore({ AWS_DEFAULT_REGION: 'eu-west-1' }).why).toBe('AWS_DEFAULT_REGION is set');
    expect(detectKeyStore({ VAULT_ADDR: 'http://vault:8200' }).provider).toBe('vault');
    expect(detectKeyStore({}).provider).toBe('file');
    const heard: string[] = [];
    const provider = openStoreDriver({ provider: 'auto' }, { ...moto.server.env, REKEY_AWS_SECRET_ID: 'x' }, (d) =>
      heard.push(d.provider),
    );
    expect(provider).toBeInstanceOf(SecretsManagerKeys);
    expect(heard).toEqual(['aws-secrets-manager']);
    provider.close();
    const vault = openStoreDriver(
      { provider: 'auto' },
      { VAULT_ADDR: 'http://vault:8200', VAULT_TOKEN: 't', REKEY_VAULT_KV_PATH: 'rekey/kek' },
    );
    expect(vault).toBeInstanceOf(VaultKvKeys);
    vault.close();
    expect(() => openStoreDriver({ provider: 'aws-secrets-manager' }, { AWS_REGION: 'us-east-1' })).toThrow(
      KeyMaterialError,
    );
  });

  it('rekey keys generate and list, with REKEY_KEY_PROVIDER=auto and AWS_DEFAULT_REGION, create the secret and show ids and fingerprints, never key bytes', async () => {
    const secretId = `rekey/${randomUUID()}`;
    const { AWS_REGION, ...rest } = moto.server.env;
    const env = {
      PATH: process.env.PATH,
      ...rest,
      AWS_DEFAULT_REGION: AWS_REGION!,
      REKEY_KEY_PROVIDER: 'auto',
      REKEY_AWS_SECRET_ID: secretId,
    };
    const rekey = (...args: string[]) => runRekey(args, env, 60_000);
    const generated = await rekey('--json', 'keys', 'generate');
    expect(generated.code, generated.stderr).toBe(0);
    const { kekId, fingerprint } = JSON.parse(generated.stdout) as { kekId: string; fingerprint: string };
    expect(kekId).toBe('v1');
    expect((await rekey('keys', 'generate')).stdout).toMatch(
      /^generated KEK 'v2' \(kcv1:[0-9a-f]{32}\) in AWS Secrets Manager secret/,
    );
    const listed = await rekey('keys', 'list');
    expect(listed.stdout.split('\n')[0]).toBe(`v1           ${fingerprint}`);
    const stored = await aws.client.send(new GetSecretValueCommand({ SecretId: secretId, VersionStage: 'AWSCURRENT' }));
    expect(stored.VersionStages).toContain('rekey-kek-v1');
    expect(listed.stdout + generated.stdout).not.toContain(stored.SecretString!);
    const versions = await versionsOf(aws.client, secretId);
    expect(versions.find((v) => v.id === versionToken(secretId, 'v2'))?.stages).toEqual(['AWSPENDING', 'rekey-kek-v2']);
  });

  it('a KEK moved by hand from the environment into the secret (the README’s two commands) is the same KEK: the registry’s fingerprint holds, and it unwraps what the environment’s KEK wrapped', async () => {
    const secretId = `rekey/${randomUUID()}`;
    const { provider: envKeys, env } = createTestKeys(['v1']);
    const wrapped = await wrapUnder(envKeys, 'v1', 'tenant-1', Buffer.alloc(32, 7));
    // aws secretsmanager create-secret --secret-string "$REKEY_KEK_v1", then update-secret-version-stage.
    const created = await aws.client.send(new CreateSecretCommand({ Name: secretId, SecretString: env.TEST_KEK_v1 }));
    await aws.client.send(
      new UpdateSecretVersionStageCommand({
        SecretId: secretId,
        VersionStage: 'rekey-kek-v1',
        MoveToVersionId: created.VersionId,
      }),
    );
    const keys = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    try {
      await keys.reload();
      expect(await storedIds(keys)).toEqual(['v1']);
      expect(keys.configuredCurrent).toBe('v1');
      const kek = await resolveKek(keys, 'v1', { fingerprint: await fingerprintIn(envKeys, 'v1'), state: 'active' });
      kek.key.fill(0);
      expect((await unwrapUnder(keys, 'v1', 'tenant-1', wrapped)).equals(Buffer.alloc(32, 7))).toBe(true);
    } finally {
      keys.close();
      envKeys.close();
    }
  });

  it('a secret whose value is not a base64url KEK, and a secret that does not exist, each fail with what to fix', async () => {
    const secretId = `rekey/${randomUUID()}`;
    const keys = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    await keys.reload();
    expect(await storedIds(keys)).toEqual([]);
    await aws.client.send(
      new CreateSecretCommand({ Name: secretId, SecretString: 'your-encryption-key-32-bytes-hex' }),
    );
    await expect(keys.reload()).rejects.toThrow(/must hold 32 random bytes as base64url/);
    keys.close();
  });

  it("Finding 1: a secret two keyspaces share belongs to the first that used it (its rekey:keyspace tag); the other's destroy is refused and the version keeps its labels", async () => {
    const { secretId, keys } = await keyspace();
    const other = await createTestDatabase();
    const otherKeys = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: secretId });
    try {
      // The first keyspace's worker validates a rotation: the secret, made without a tag, is tagged as its own.
      await createActivities({ db: aws.db.pool, keys }).validateRotation({ from: 'v1', to: 'new', dryRun: true });
      const owner = await keyspaceIn(aws.db.pool);
      const described = await aws.client.send(new DescribeSecretCommand({ SecretId: secretId }));
      expect(described.Tags).toEqual([{ Key: 'rekey:keyspace', Value: owner.id }]);

      // Another database whose registry used the same v1, rotated away from it, and whose restore window ended.
      await otherKeys.reload();
      await generateKek(otherKeys, 'v2');
      const registry = new KekRegistry(other.pool, BUILTIN_TARGET);
      await registry.seedActive('v1', await fingerprintIn(otherKeys, 'v1'));
      await registry.register('v2', await fingerprintIn(otherKeys, 'v2'));
      await registry.promote('v1', 'v2');
      const activities = createActivities({ db: other.pool, keys: otherKeys });
      // Its retire step would relabel the owner's version: refused before anything changes, here or in the store.
      const notRetired = await activities.retireKek({ from: 'v1' }).catch((err: unknown) => err);
      expect(notRetired).toBeInstanceOf(KeyspaceMismatchError);
      expect((notRetired as Error).message).toMatch(/^not retiring KEK 'v1': AWS Secrets Manager secret /);
      expect((await registry.get('v1'))?.state).toBe('decrypt_only');
      // Its window ended: the destroy step.
      await inTransaction(other.pool, (client) => registry.retire('v1', 0, client));
      const refused = await activities.destroyKek({ kekId: 'v1' }).catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(KeyspaceMismatchError);
      expect((refused as Error).message).toMatch(
        new RegExp(
          `^not destroying KEK 'v1': AWS Secrets Manager secret '${secretId}' records it as keyspace ${owner.id}'s, and target 'rekey' is keyspace ${(await keyspaceIn(other.pool)).id}\\.`,
        ),
      );
      // v1's version still carries its labels: the first keyspace still reads it.
      const v1 = (await versionsOf(aws.client, secretId)).find((v) => v.id === versionToken(secretId, 'v1'));
      expect(v1?.stages).toContain('rekey-kek-v1');
      expect((await registry.get('v1'))?.state).toBe('retired');
      // A secret rekey creates for a keyspace is tagged from the start.
      const fresh = `rekey/${randomUUID()}`;
      const created = SecretsManagerKeys.fromEnv({ ...moto.server.env, REKEY_AWS_SECRET_ID: fresh });
      await generateKek(created, 'v1', { owner: owner.id });
      created.close();
      expect((await aws.client.send(new DescribeSecretCommand({ SecretId: fresh }))).Tags).toEqual([
        { Key: 'rekey:keyspace', Value: owner.id },
      ]);
    } finally {
      keys.close();
      otherKeys.close();
      await other.drop();
    }
  });
});
