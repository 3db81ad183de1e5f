import { randomBytes, randomUUID } from 'node:crypto';
import {
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  GenerateDataKeyCommand,
  KMSClient,
  ListAliasesCommand,
  ListKeysCommand,
  ListResourceTagsCommand,
  UpdateAliasCommand,
} from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { awsClientConfig } from '../../src/keyring/aws';
import { KMS_KEK_TAG, kmsFingerprint, kmsSettingsFromEnv, KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { resolveKek, fingerprintIn, storedIds } from '../helpers/store-keys';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { restoreKek } from '../../src/targets/restore-kek';
import { TargetRuntimes } from '../../src/targets/runtime';
import { TenantCrypto } from '../../src/tenant-crypto';
import { parseTargetsConfig } from '../../src/targets/config';
import {
  KekRetiredError,
  KeyMaterialError,
  KeyspaceMismatchError,
  KeyStoreRefusedError,
  TargetConfigError,
} from '../../src/errors';
import { createTestDatabase } from '../helpers/database';
import { loseFirstAnswer, throttlingProxy, useAwsServers } from '../helpers/aws';
import { keyspaceIn } from '../helpers/keyspace';
import { runRotation } from '../helpers/rotation-run';
import { destroyedAfterWindow } from '../helpers/store-rotation';
import { startLiveWriter } from '../helpers/live-writer';
import { createTalosSchema, seedSecrets } from '../helpers/talos';
import { generateKek } from '../../src/keyring/keyring';

const TENANTS = 200;

// The stored form as the README documents it, written here with the SDK alone (not rekey's code): format byte 0x02,
// then KMS's ciphertext blob, under the encryption context {rekey:tenant, rekey:kek}.
const KMS_FORMAT_BYTE = Buffer.from([0x02]);
const contextFor = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });

describe('aws-kms key provider against a moto server', () => {
  const aws = useAwsServers((env) => new KMSClient(awsClientConfig(env, 'KMS')));
  const { moto, temporal } = aws;

  const arnOf = async (keyId: string) => (await aws.client.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata!;

  /**
   * A keyspace of its own: an alias prefix with v1 (current) created by rekey, and TENANTS DEKs wrapped under v1 by
   * the test itself with GenerateDataKey; returns each tenant's plaintext DEK, to compare after the rotation.
   */
  async function keyspace(env: Record<string, string> = moto.server.env, tenants = TENANTS) {
    const prefix = `alias/rekey-test/${randomUUID()}/`;
    const settings = { ...env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix, REKEY_AWS_KMS_RATE: '0' };
    const keys = KmsKeys.fromEnv(settings);
    await generateKek(keys, 'v1');
    await aws.db.pool.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
    await new KekRegistry(aws.db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    const v1 = (await arnOf(`${prefix}kek-v1`)).Arn!;
    const deks = new Map<string, Buffer>();
    const ids = Array.from({ length: tenants }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
    const wrapped: Buffer[] = [];
    for (let i = 0; i < ids.length; i += 25) {
      const made = await Promise.all(
        ids
          .slice(i, i + 25)
          .map((id) =>
            aws.client.send(
              new GenerateDataKeyCommand({ KeyId: v1, KeySpec: 'AES_256', EncryptionContext: contextFor(id, 'v1') }),
            ),
          ),
      );
      made.forEach((m, j) => {
        deks.set(ids[i + j]!, Buffer.from(m.Plaintext!));
        wrapped.push(Buffer.concat([KMS_FORMAT_BYTE, m.CiphertextBlob!]));
      });
    }
    await aws.db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids, wrapped],
    );
    return { prefix, settings, keys, deks };
  }

  /** Each tenant's DEK as KMS decrypts it from the stored row, under the context of the KEK the row is labelled with. */
  async function storedDeks(): Promise<Map<string, { kekId: string; dek: Buffer }>> {
    const { rows } = await aws.db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
      'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
    );
    const out = new Map<string, { kekId: string; dek: Buffer }>();
    for (const row of rows) {
      expect(row.wrapped_dek[0]).toBe(0x02);
      const opened = await aws.client.send(
        new DecryptCommand({
          CiphertextBlob: row.wrapped_dek.subarray(1),
          EncryptionContext: contextFor(row.tenant_id, row.kek_id),
        }),
      );
      out.set(row.tenant_id, { kekId: row.kek_id, dek: Buffer.from(opened.Plaintext!) });
    }
    return out;
  }

  // Each DEK is a call to moto, a Python process sharing the machine's cores: a busy machine is given time for it.
  const rotate = async (activities: Activities, request: RotationRequest) =>
    (await runRotation(temporal.env, activities, aws.db.pool, request, { timeoutMs: 200_000 })).report;

  it('a rotation from one KMS key to another moves every DEK with ReEncrypt while a live writer works: the worker never calls Decrypt or GenerateDataKey, every third call is throttled and ridden out, and every DEK is the same after', async () => {
    const { prefix, settings, keys, deks } = await keyspace();
    keys.close();
    // The worker talks to KMS through a proxy that counts its calls by operation and throttles every third one.
    const proxy = await throttlingProxy(moto.server.endpoint, 3);
    const workerKeys = KmsKeys.fromEnv({ ...settings, AWS_ENDPOINT_URL: proxy.endpoint });
    await workerKeys.reload();
    // The application: another process with its own client, straight to KMS.
    const appKeys = KmsKeys.fromEnv(settings);
    await appKeys.reload();
    const app = new TenantCrypto({ db: aws.db.pool, keys: appKeys, registryTtlMs: 100 });
    await app.start();
    // Steady, not flat out: moto is one Python process on the machine's few cores, shared with the worker.
    const writer = startLiveWriter(app, (n) => `tenant-${String(n % TENANTS).padStart(5, '0')}`, { pauseMs: 5 });
    try {
      const report = await rotate(createActivities({ db: aws.db.pool, keys: workerKeys }), {
        from: 'v1',
        to: 'new',
        // Batches of 50: a call the proxy throttles three or four times running backs off for seconds (the SDK's
        // throttling backoff) while the calls of the batches after it go on (test/keys/kms-batch-tail.test.ts).
        batchSize: 50,
        gracePeriod: '1d',
        fleetLiveWithin: '1h',
      });
      await writer.stop();
      expect(report.outcome).toBe('completed');
      expect(writer.writes).toBeGreaterThan(0);

      // The instrumentation: what the worker asked KMS for. No call that returns a plaintext DEK was made.
      expect(proxy.forwarded.get('Decrypt') ?? 0).toBe(0);
      expect(proxy.forwarded.get('GenerateDataKey') ?? 0).toBe(0);
      expect(proxy.forwarded.get('ReEncrypt')).toBeGreaterThanOrEqual(TENANTS);
      expect(proxy.forwarded.get('CreateKey')).toBe(1);
      // A first attempt does not search the account for a key an earlier attempt created: it lists no keys, and
      // reads the tags of no key but those it acts on, for their owner record (finding 1 of issue 24): v1 when the
      // keyspace adopts the keys it found untagged and again at validate, v2 at provision, v1 at retire.
      expect(proxy.forwarded.get('ListKeys') ?? 0).toBe(0);
      expect(proxy.forwarded.get('ListResourceTags') ?? 0).toBe(4);
      expect(proxy.forwarded.get('TagResource') ?? 0).toBe(1);
      expect(proxy.forwarded.get('DisableKey')).toBe(1);
      expect(proxy.throttled).toBeGreaterThan(TENANTS / 4);
      // The progress counts the worker's calls: at least one per DEK it moved.
      expect(report.counters.rewrapped).toBeGreaterThan(0);
      expect(report.counters.keyStoreRequests).toBeGreaterThanOrEqual(report.counters.rewrapped);

      // Every DEK, decrypted by KMS from its row under v2's context, is the one the tenant had before.
      const after = await storedDeks();
      const v2 = await arnOf(`${prefix}kek-v2`);
      for (const [tenantId, dek] of deks) {
        expect(after.get(tenantId)?.kekId).toBe('v2');
        expect(after.get(tenantId)?.dek.equals(dek)).toBe(true);
      }
      // What the application wrote during the rotation reads back, through a fresh application process.
      const reader = new TenantCrypto({ db: aws.db.pool, keys: KmsKeys.fromEnv(settings), registryTtlMs: 100 });
      await reader.start();
      for (const [tenantId, ciphertext] of writer.written) {
        expect((await reader.decrypt(tenantId, ciphertext)).toString()).toBe('fresh');
      }
      await reader.stop();

      // The store: v2 is current, v1's key is disabled (material kept for the restore window).
      const aliases = await aws.client.send(new ListAliasesCommand({}));
      expect(aliases.Aliases?.find((a) => a.AliasName === `${prefix}current`)?.TargetKeyId).toBe(v2.KeyId);
      expect((await arnOf(`${prefix}kek-v1`)).KeyState).toBe('Disabled');
      // Each key records the keyspace it belongs to (issue 24, finding 1): v2 from its creation, v1 once adopted.
      const { id: keyspaceId } = await keyspaceIn(aws.db.pool);
      for (const kek of ['v1', 'v2']) {
        const key = await arnOf(`${prefix}kek-${kek}`);
        const tags = await aws.client.send(new ListResourceTagsCommand({ KeyId: key.KeyId }));
        expect(tags.Tags).toContainEqual({ TagKey: 'rekey:keyspace', TagValue: keyspaceId });
      }
      const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
      expect((await registry.get('v2'))?.fingerprint).toBe(kmsFingerprint(v2.Arn!));
      expect((await registry.get('v1'))?.state).toBe('retired');
      await workerKeys.reload();
      const v1Record = await registry.get('v1');
      expect((await storedIds(workerKeys)).includes('v1')).toBe(true);
      await expect(resolveKek(workerKeys, 'v1', v1Record)).rejects.toThrow(KekRetiredError);

      // Within its window v1 comes back: decrypt-only in the registry, enabled in KMS.
      const runtime = await new TargetRuntimes({ db: aws.db.pool, keys: workerKeys }).get();
      await restoreKek(runtime, 'v1', 'an old replica still reads v1', 'bob');
      expect((await registry.get('v1'))?.state).toBe('decrypt_only');
      expect((await arnOf(`${prefix}kek-v1`)).KeyState).toBe('Enabled');
    } finally {
      await writer.stop();
      await app.stop();
      appKeys.close();
      workerKeys.close();
      await proxy.close();
    }
  }, 240_000);

  it('a provision whose CreateKey answer was lost is retried by Temporal and creates one key: the retry finds it by its tag', async () => {
    const { prefix, settings, keys } = await keyspace();
    keys.close();
    const lossy = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
    const losing = loseFirstAnswer(lossy, 'CreateKey');
    const lossyKeys = new KmsKeys(lossy, kmsSettingsFromEnv(settings));
    try {
      const report = await rotate(createActivities({ db: aws.db.pool, keys: lossyKeys }), {
        from: 'v1',
        to: 'new',
        gracePeriod: '1d',
        fleetLiveWithin: '1h',
      });
      expect(losing.lost).toBe(1);
      expect(report.outcome).toBe('completed');
      const tagged: string[] = [];
      for (const key of (await aws.client.send(new ListKeysCommand({ Limit: 1000 }))).Keys ?? []) {
        const tags = await aws.client.send(new ListResourceTagsCommand({ KeyId: key.KeyId }));
        if (tags.Tags?.some((t) => t.TagKey === KMS_KEK_TAG && t.TagValue === `${prefix}kek-v2`))
          tagged.push(key.KeyId!);
      }
      expect(tagged).toHaveLength(1);
      expect((await arnOf(`${prefix}kek-v2`)).KeyId).toBe(tagged[0]);
      const v2 = await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v2');
      expect(v2?.fingerprint).toBe(kmsFingerprint((await arnOf(tagged[0]!)).Arn!));
    } finally {
      lossyKeys.close();
    }
  }, 240_000);

  it('a retried provision looks for the earlier attempt’s key only until its deadline: found within it, and past it a new key is made so that the step ends', async () => {
    const prefix = `alias/rekey-test/${randomUUID()}/`;
    const keys = KmsKeys.fromEnv({ ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix });
    // Keys an earlier attempt created for the aliases of v1 and v2, whose answers were lost: tagged, no alias.
    const earlier = async (kekId: string) =>
      (
        await aws.client.send(
          new CreateKeyCommand({ Tags: [{ TagKey: KMS_KEK_TAG, TagValue: `${prefix}kek-${kekId}` }] }),
        )
      ).KeyMetadata!.KeyId!;
    try {
      const v1 = await earlier('v1');
      await generateKek(keys, 'v1', { retry: true, searchUntil: Date.now() + 60_000 });
      expect((await arnOf(`${prefix}kek-v1`)).KeyId).toBe(v1);
      const v2 = await earlier('v2');
      await generateKek(keys, 'v2', { retry: true, searchUntil: Date.now() - 1 });
      const made = (await arnOf(`${prefix}kek-v2`)).KeyId;
      expect(made).not.toBe(v2);
      expect((await arnOf(v2)).KeyState).toBe('Enabled'); // left as it was, for the operator to delete
    } finally {
      keys.close();
    }
  });

  it('after its restore window the retired KEK’s key is scheduled for deletion, the registry says destroyed, and a restore is refused', async () => {
    const { prefix, keys } = await keyspace();
    try {
      await destroyedAfterWindow(
        { env: temporal.env, db: aws.db.pool },
        keys,
        { detail: /scheduled for deletion on .* cancel-key-deletion/ },
        async () => {
          const v1 = await arnOf(`${prefix}kek-v1`);
          expect(v1.KeyState).toBe('PendingDeletion');
          expect(v1.DeletionDate!.getTime() - Date.now()).toBeGreaterThan(29 * 86_400_000);
          await keys.reload();
          expect((await storedIds(keys)).includes('v1')).toBe(false);
        },
      );
    } finally {
      keys.close();
    }
  });

  /** v1 (current) and v2, provisioned and promoted by the rotation's own activities, on a keyspace with no rows. */
  async function promotedToV2() {
    const { prefix, settings, keys } = await keyspace(moto.server.env, 0);
    const activities = createActivities({ db: aws.db.pool, keys });
    await activities.provisionKek({ kekId: 'v2', generate: true, from: 'v1' });
    await activities.promoteKek({ from: 'v1', to: 'v2' });
    const v1 = await arnOf(`${prefix}kek-v1`);
    const v2 = await arnOf(`${prefix}kek-v2`);
    return { prefix, settings, keys, activities, v1, v2 };
  }

  const pointAlias = (alias: string, keyId: string) =>
    aws.client.send(new UpdateAliasCommand({ AliasName: alias, TargetKeyId: keyId }));

  it('finding 2: destroy schedules the deletion of the key ARN the registry recorded, never the key the alias names now: with alias kek-v1 moved to the active v2’s key it is refused naming both ARNs, and v2 stays Enabled', async () => {
    const { prefix, keys, activities, v1, v2 } = await promotedToV2();
    const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
    try {
      await activities.retireKek({ from: 'v1', restoreWindowMs: 0, allowShortRestoreWindow: 'test: destroy at once' });
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('Disabled');
      // By hand, or by a second deployment on the same prefix: v1's alias now names the active KEK's key.
      await pointAlias(`${prefix}kek-v1`, v2.KeyId!);
      const refused = await activities.destroyKek({ kekId: 'v1' }).catch((err: unknown) => err);
      expect((await arnOf(v2.KeyId!)).KeyState).toBe('Enabled');
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('Disabled');
      expect(refused).toBeInstanceOf(KeyStoreRefusedError);
      expect((refused as Error).message).toContain(v1.Arn);
      expect((refused as Error).message).toContain(v2.Arn);
      expect((refused as Error).message).toContain(
        `aws kms update-alias --alias-name ${prefix}kek-v1 --target-key-id ${v1.Arn}`,
      );
      expect((await registry.get('v1'))?.state).toBe('retired');

      // Pointed back, the destruction goes ahead on v1's key alone.
      await pointAlias(`${prefix}kek-v1`, v1.KeyId!);
      const report = await activities.destroyKek({ kekId: 'v1' });
      expect(report.outcome).toBe('destroyed');
      expect(report.detail).toContain(v1.Arn);
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('PendingDeletion');
      expect((await arnOf(v2.KeyId!)).KeyState).toBe('Enabled');
      expect((await registry.get('v1'))?.state).toBe('destroyed');
    } finally {
      keys.close();
    }
  });

  it('finding 2: retire, restore and promote act on the recorded key ARN: each is refused naming both ARNs while the KEK’s alias names another key, and the key the alias names is left as it was', async () => {
    const { prefix, keys, activities, v1, v2 } = await promotedToV2();
    const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
    try {
      // Retire: v1's alias names the active v2's key. Today's code disabled v2.
      await pointAlias(`${prefix}kek-v1`, v2.KeyId!);
      const retire = await activities.retireKek({ from: 'v1' }).catch((err: unknown) => err);
      expect((await arnOf(v2.KeyId!)).KeyState).toBe('Enabled');
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('Enabled');
      expect(retire).toBeInstanceOf(KeyStoreRefusedError);
      expect((retire as Error).message).toMatch(new RegExp(`${v1.Arn}[^]*${v2.Arn}`));
      // Pointed back, the retry disables v1's key (the registry retired it already: the retry only does the store).
      await pointAlias(`${prefix}kek-v1`, v1.KeyId!);
      await activities.retireKek({ from: 'v1' });
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('Disabled');
      expect((await registry.get('v1'))?.state).toBe('retired');

      // Restore: the store's step names the recorded key too, whatever the alias says.
      const runtime = await new TargetRuntimes({ db: aws.db.pool, keys }).get();
      await pointAlias(`${prefix}kek-v1`, v2.KeyId!);
      await expect(restoreKek(runtime, 'v1', 'a replica reads v1', 'bob')).rejects.toThrow(v2.Arn!);
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('Disabled');
      await pointAlias(`${prefix}kek-v1`, v1.KeyId!);
      await restoreKek(runtime, 'v1', 'a replica reads v1', 'bob');
      expect((await arnOf(v1.KeyId!)).KeyState).toBe('Enabled');

      // Promote: v3's alias moved to v1's key before the promotion; `current` is not pointed at it.
      await activities.provisionKek({ kekId: 'v3', generate: true, from: 'v2' });
      const v3 = await arnOf(`${prefix}kek-v3`);
      await pointAlias(`${prefix}kek-v3`, v1.KeyId!);
      const promote = await activities.promoteKek({ from: 'v2', to: 'v3' }).catch((err: unknown) => err);
      expect(promote).toBeInstanceOf(KeyStoreRefusedError);
      expect((promote as Error).message).toMatch(new RegExp(`${v3.Arn}[^]*${v1.Arn}`));
      expect((await arnOf(`${prefix}current`)).Arn).toBe(v2.Arn);
      await pointAlias(`${prefix}kek-v3`, v3.KeyId!);
      await activities.promoteKek({ from: 'v2', to: 'v3' });
      expect((await arnOf(`${prefix}current`)).Arn).toBe(v3.Arn);
    } finally {
      keys.close();
    }
  });

  it('finding 2: a provision refuses an alias prefix another deployment already uses, naming the alias its registry does not record, and creates nothing', async () => {
    // Deployment A: v1 and v2 under the prefix, in its registry.
    const { prefix, settings, keys, activities } = await promotedToV2();
    // Deployment B: its own database, the same prefix (both left the default). Its application does not seed B's
    // registry from `current`, which names A's v2 (tagged A's): refused, naming both keyspaces.
    const other = await createTestDatabase();
    const otherKeys = KmsKeys.fromEnv(settings);
    const app = new TenantCrypto({ db: other.pool, keys: otherKeys, registryTtlMs: 100 });
    try {
      await otherKeys.reload();
      await expect(app.start()).rejects.toThrow(KeyspaceMismatchError);
      expect(await new KekRegistry(other.pool, BUILTIN_TARGET).list()).toEqual([]);
      const refused = await createActivities({ db: other.pool, keys: otherKeys })
        .provisionKek({ kekId: 'v3', generate: true, from: 'v2' })
        .catch((err: unknown) => err);
      const aliases = (await aws.client.send(new ListAliasesCommand({}))).Aliases ?? [];
      expect(aliases.some((a) => a.AliasName === `${prefix}kek-v3`)).toBe(false);
      expect(await new KekRegistry(other.pool, BUILTIN_TARGET).get('v3')).toBeUndefined();
      expect(refused).toBeInstanceOf(KeyStoreRefusedError);
      expect((refused as Error).message).toContain(`${prefix}kek-v1`);
      expect((refused as Error).message).toContain('REKEY_AWS_KMS_ALIAS_PREFIX');

      // A key rekey created for the alias (`rekey keys generate`, or an attempt whose registration was lost) is A's.
      await generateKek(keys, 'v4');
      const v4 = await activities.provisionKek({ kekId: 'v4', generate: true, from: 'v2' });
      expect(v4.fingerprint).toBe(kmsFingerprint((await arnOf(`${prefix}kek-v4`)).Arn!));

      // In A, a key made by hand and aliased kek-v3 is not one rekey created for that alias: refused too.
      const handMade = (await aws.client.send(new CreateKeyCommand({}))).KeyMetadata!;
      await aws.client.send(new CreateAliasCommand({ AliasName: `${prefix}kek-v3`, TargetKeyId: handMade.KeyId }));
      const foreign = await activities
        .provisionKek({ kekId: 'v3', generate: true, from: 'v2' })
        .catch((err: unknown) => err);
      expect(await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v3')).toBeUndefined();
      expect(foreign).toBeInstanceOf(KeyStoreRefusedError);
      expect((foreign as Error).message).toContain(handMade.Arn);
    } finally {
      await app.stop();
      otherKeys.close();
      keys.close();
      await other.drop();
    }
  });

  it('a key disabled in KMS behind the registry’s back is refused by rekey, though moto itself still uses it', async () => {
    const { prefix, settings, keys } = await keyspace();
    keys.close();
    const v1 = await arnOf(`${prefix}kek-v1`);
    await aws.client.send(new DisableKeyCommand({ KeyId: v1.KeyId }));
    // moto does not refuse a disabled key (AWS would, with DisabledException): rekey must.
    const served = await aws.client.send(
      new GenerateDataKeyCommand({ KeyId: v1.Arn, KeySpec: 'AES_256', EncryptionContext: contextFor('x', 'v1') }),
    );
    expect(served.CiphertextBlob?.length).toBeGreaterThan(0);
    const appKeys = KmsKeys.fromEnv(settings);
    const app = new TenantCrypto({ db: aws.db.pool, keys: appKeys, registryTtlMs: 100 });
    await app.start();
    try {
      await expect(app.encrypt('a-new-tenant', 'x')).rejects.toThrow(KeyMaterialError);
      await expect(app.encrypt('a-new-tenant', 'x')).rejects.toThrow(/is Disabled: rekey does not use it/);
      await expect(app.decrypt('tenant-00001', 'v2:AAAA')).rejects.toThrow(/is Disabled/);
      const { rows } = await aws.db.pool.query(`SELECT 1 FROM rekey.tenant_deks WHERE tenant_id = 'a-new-tenant'`);
      expect(rows).toHaveLength(0);
    } finally {
      await app.stop();
      appKeys.close();
    }
  });

  it('a target whose format seals values with key bytes is refused at the rotation’s first step when its keys are in KMS, naming what to change; nothing is written', async () => {
    const { keys } = await keyspace();
    // Talos's table, its secrets encrypted directly by a 32-byte KEK, but the target told to use the process's keys.
    await createTalosSchema(aws.db.pool);
    try {
      await seedSecrets(aws.db.pool, randomBytes(32), 'k1', 3, 'v1');
      const before = (await aws.db.pool.query('SELECT * FROM public.secrets ORDER BY id')).rows;
      // rekey's own target gets keys of its own: one key store belongs to one keyspace (refused at load otherwise).
      const config = parseTargetsConfig(
        'targets:\n  rekey:\n    keys: { provider: env, prefix: OWN }\n  talos:\n    preset: talos\n    keys: { provider: default }\n',
      );
      const activities = createActivities({ db: aws.db.pool, keys, targets: config });
      const refused = await activities
        .validateRotation({ target: 'talos', from: 'k1', to: 'new' })
        .catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(TargetConfigError);
      expect((refused as Error).message).toBe(
        `target 'talos': its KEKs are in ${keys.description}, which never hands out key bytes, but its format seals ` +
          `values with key bytes (only rekey's own table has a KMS form): give the target keys of its own ` +
          `(keys.provider env or file in the file REKEY_CONFIG names), or run it with another REKEY_KEY_PROVIDER`,
      );
      expect((await aws.db.pool.query('SELECT * FROM public.secrets ORDER BY id')).rows).toEqual(before);
      expect((await aws.db.pool.query(`SELECT 1 FROM rekey.keks WHERE target = 'talos'`)).rowCount).toBe(0);
    } finally {
      keys.close();
      await aws.db.pool.query('DROP TABLE public.secrets');
    }
  });

  it('refuses settings it cannot use, naming the variable', () => {
    expect(() => kmsSettingsFromEnv({ REKEY_AWS_KMS_ALIAS_PREFIX: 'rekey/' })).toThrow(/must start with 'alias\/'/);
    expect(() => kmsSettingsFromEnv({ REKEY_AWS_KMS_ALIAS_PREFIX: 'alias/aws/x/' })).toThrow(/alias\/aws\//);
    expect(() => kmsSettingsFromEnv({ REKEY_AWS_KMS_CONCURRENCY: '0' })).toThrow(/REKEY_AWS_KMS_CONCURRENCY must be/);
    expect(() => kmsSettingsFromEnv({ REKEY_AWS_KMS_DELETION_WINDOW_DAYS: '3' })).toThrow(/from 7 to 30/);
    expect(kmsSettingsFromEnv({})).toEqual({
      aliasPrefix: 'alias/rekey/',
      limits: { concurrency: 16, ratePerSecond: 500 },
      deletionWindowDays: 30,
    });
  });
});
