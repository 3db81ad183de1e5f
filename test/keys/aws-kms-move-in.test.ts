// Moving a keyspace whose KEK is held locally into AWS KMS (REKEY_AWS_KMS_LOCAL_KEYS), against a moto server: an
// ordinary rotation from the local KEK to a new one, with the application at work throughout.
import { randomBytes, randomUUID } from 'node:crypto';
import { DecryptCommand, DescribeKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { REKEY_DEK_FORMAT } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { engineView } from '../../src/keyring/cipher';
import { storeCipher, generateKek } from '../../src/keyring/keyring';
import { openStoreDriver } from '../../src/keyring/open';
import { awsClientConfig } from '../../src/keyring/aws';
import { kmsFingerprint, kmsSettingsFromEnv } from '../../src/keyring/drivers/aws-kms';
import type { KmsWithLocalKeys } from '../../src/keyring/drivers/kms-move-in';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TenantCrypto } from '../../src/tenant-crypto';
import { ConfigError, KeyMaterialError } from '../../src/errors';
import { throttlingProxy, useAwsServers } from '../helpers/aws';
import { startLiveWriter } from '../helpers/live-writer';
import { runRotation } from '../helpers/rotation-run';
import { wrapUnder, fingerprintIn, storedIds } from '../helpers/store-keys';

const TENANTS = 200;
const tenantId = (n: number) => `tenant-${String(n % TENANTS).padStart(5, '0')}`;

describe('moving a keyspace into AWS KMS from a KEK held in the environment, against a moto server', () => {
  const aws = useAwsServers((env) => new KMSClient(awsClientConfig(env, 'KMS')));
  const { moto, temporal } = aws;

  /**
   * A deployment as it was, REKEY_KEK_v1 in the environment (prefix TEST here), now also pointed at KMS under an
   * alias prefix of its own.
   */
  const movingIn = () => {
    const prefix = `alias/rekey-test/${randomUUID()}/`;
    const env = {
      ...moto.server.env,
      REKEY_AWS_KMS_ALIAS_PREFIX: prefix,
      REKEY_AWS_KMS_LOCAL_KEYS: 'env',
      REKEY_ENV_PREFIX: 'TEST',
      TEST_KEK_v1: randomBytes(32).toString('base64url'),
    };
    return { prefix, env };
  };

  it('a rotation from the local KEK to a new one moves every DEK into KMS while the application works: each row is then a KMS blob under the new KEK that KMS decrypts to the DEK it held, and the application reads everything', async () => {
    const { prefix, env: movingEnv } = movingIn();
    const env = { ...movingEnv, REKEY_AWS_KMS_RATE: '0', TEST_CURRENT_KEK_ID: 'v1' };
    const open = async (endpoint?: string): Promise<KmsWithLocalKeys> => {
      const keys = openStoreDriver(
        { provider: 'aws-kms' },
        endpoint === undefined ? env : { ...env, AWS_ENDPOINT_URL: endpoint },
      ) as KmsWithLocalKeys;
      await keys.reload();
      return keys;
    };
    // Every tenant's DEK under v1, as the application wrote them before KMS: the plaintexts are kept to compare.
    const seeding = await open();
    expect(await storedIds(seeding)).toEqual(['v1']);
    await new KekRegistry(aws.db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(seeding, 'v1'));
    const deks = new Map<string, Buffer>();
    const ids = Array.from({ length: TENANTS }, (_, i) => tenantId(i));
    const wrapped: Buffer[] = [];
    for (const id of ids) {
      const dek = randomBytes(32);
      deks.set(id, dek);
      wrapped.push(await wrapUnder(seeding, 'v1', id, dek));
    }
    seeding.close();
    await aws.db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids, wrapped],
    );

    // The worker talks to KMS through a proxy that counts its calls and throttles every fourth one.
    const proxy = await throttlingProxy(moto.server.endpoint, 4);
    const workerKeys = await open(proxy.endpoint);
    const appKeys = await open();
    const app = new TenantCrypto({ db: aws.db.pool, keys: appKeys, registryTtlMs: 100 });
    await app.start();
    const writer = startLiveWriter(app, tenantId, { pauseMs: 5 });
    try {
      const { report } = await runRotation(
        temporal.env,
        createActivities({ db: aws.db.pool, keys: workerKeys }),
        aws.db.pool,
        { from: 'v1', to: 'new', batchSize: 50, gracePeriod: '1d', fleetLiveWithin: '1h' },
        { timeoutMs: 200_000 },
      );
      await writer.stop();
      expect(report.outcome).toBe('completed');
      expect(writer.writes).toBeGreaterThan(0);
      // The worker moved the DEKs with Encrypt (a DEK under key bytes has no other way into KMS), and asked KMS
      // for no plaintext: no Decrypt, no GenerateDataKey.
      expect(proxy.forwarded.get('Encrypt')).toBeGreaterThanOrEqual(report.counters.rewrapped);
      expect(proxy.forwarded.get('Decrypt') ?? 0).toBe(0);
      expect(proxy.forwarded.get('GenerateDataKey') ?? 0).toBe(0);
      expect(proxy.throttled).toBeGreaterThan(0);
      expect(report.counters.keyStoreRequests).toBeGreaterThanOrEqual(report.counters.rewrapped);

      // Every row: on v2, in the KMS form, and KMS itself (the test's own client) decrypts it, under the context of
      // the tenant and v2, to the DEK the tenant had under v1.
      const { rows } = await aws.db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
        'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks',
      );
      expect(rows.length).toBeGreaterThanOrEqual(TENANTS);
      for (const row of rows) {
        expect({ tenant: row.tenant_id, kek: row.kek_id, form: row.wrapped_dek[0] }).toEqual({
          tenant: row.tenant_id,
          kek: 'v2',
          form: 0x02,
        });
        const opened = await aws.client.send(
          new DecryptCommand({
            CiphertextBlob: row.wrapped_dek.subarray(1),
            EncryptionContext: { 'rekey:tenant': row.tenant_id, 'rekey:kek': 'v2' },
          }),
        );
        if (deks.has(row.tenant_id)) expect(Buffer.from(opened.Plaintext!).equals(deks.get(row.tenant_id)!)).toBe(true);
      }
      // What the application wrote during the move reads back through a fresh application process.
      const reader = new TenantCrypto({ db: aws.db.pool, keys: await open(), registryTtlMs: 100 });
      await reader.start();
      for (const [tenant, ciphertext] of writer.written) {
        expect((await reader.decrypt(tenant, ciphertext)).toString()).toBe('fresh');
      }
      await reader.stop();

      // The registry trusts v2 by its key ARN; v1 is retired (its bytes stay in the environment until the window).
      const registry = new KekRegistry(aws.db.pool, BUILTIN_TARGET);
      const v2 = (await aws.client.send(new DescribeKeyCommand({ KeyId: `${prefix}kek-v2` }))).KeyMetadata!;
      expect(await registry.get('v2')).toMatchObject({ state: 'active', fingerprint: kmsFingerprint(v2.Arn!) });
      expect((await registry.get('v1'))?.state).toBe('retired');
      // KMS's `current` alias names v2 once the move is done (the promotion made it: v1, local, was current before).
      const current = (await aws.client.send(new DescribeKeyCommand({ KeyId: `${prefix}current` }))).KeyMetadata!;
      expect(current.Arn).toBe(v2.Arn);

      // Nothing moves out of KMS: a DEK under v2 is not re-wrapped under the local KEK, by the engine or the API
      // (the worker's ciphers of v2, in KMS, and of v1, still in the environment).
      const codec = compileFormat(REKEY_DEK_FORMAT);
      const onKms = await storeCipher(workerKeys, 'v2');
      const local = await storeCipher(workerKeys, 'v1');
      try {
        await expect(
          engineView([onKms, local]).crypto.rewrap(codec, onKms.rowKek(), local.rowKek(), [rows[0]!], {
            others: false,
            dryRun: false,
          }),
        ).rejects.toThrow(ConfigError);
        await expect(onKms.moveTo(local, rows[0]!.tenant_id, rows[0]!.wrapped_dek)).rejects.toThrow(
          /into AWS KMS, not out of it/,
        );
      } finally {
        onKms.release();
        local.release();
      }
    } finally {
      await writer.stop();
      await app.stop();
      appKeys.close();
      workerKeys.close();
      await proxy.close();
    }
  }, 240_000);

  it('refuses a local source it does not know, and a KEK id that names a key in both stores', async () => {
    expect(() => kmsSettingsFromEnv({ REKEY_AWS_KMS_LOCAL_KEYS: 'vault' })).toThrow(
      /REKEY_AWS_KMS_LOCAL_KEYS must be 'env' \(REKEY_KEK_<id>\) or 'file'/,
    );
    const keys = openStoreDriver({ provider: 'aws-kms' }, movingIn().env);
    try {
      await keys.reload();
      await generateKek(keys, 'v1');
      const refused = await keys.reload().catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(KeyMaterialError);
      expect((refused as Error).message).toMatch(/KEK id\(s\) 'v1' name both a KMS key .* and a key in env/);
    } finally {
      keys.close();
    }
  });
});
