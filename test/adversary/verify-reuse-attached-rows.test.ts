// Adversary of retire's reuse of verify's proof in a KMS keyspace (issue 27, quota6). The shortcut leaves out of
// retire's pre-pass the rows labelled with the active KEK whose xmin is before verify's mark: "the database shows them
// unchanged since verify opened them". A row version with an old xmin was not necessarily read by verify: rows that
// join the target's table after verify without a new version (a table attached by ALTER TABLE … INHERIT, a partition
// by ATTACH PARTITION, a table renamed into place: a restore into a staging table, then swapped in) carry the xmin of
// whatever wrote them before. Here such a row is labelled v2 while its value is still sealed under v1 (the label lies,
// as a stale instance writes it: kms-verify-reuse's own second case); verify never saw it, and the pre-pass must try
// it. Against moto, with the worker's KMS calls counted through a proxy.
import { randomBytes, randomUUID } from 'node:crypto';
import { DescribeKeyCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { generateKek } from '../../src/keyring/keyring';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { fingerprintIn } from '../helpers/store-keys';
import { throttlingProxy, useAwsServers } from '../helpers/aws';
import { runRotation } from '../helpers/rotation-run';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import type { Activities } from '../../src/activities';
import { freshKeyspace } from '../helpers/store-rotation';
import { useVaultServers } from '../helpers/vault';
import { transitEnv } from '../helpers/store-env';

const TENANTS = 40;
const KMS_FORMAT_BYTE = Buffer.from([0x02]);
const contextFor = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });

describe('quota6 adversary: retire after verify in a KMS keyspace, rows that join the table after verify', () => {
  const aws = useAwsServers((env) => new KMSClient(awsClientConfig(env, 'KMS')));
  const { moto, temporal } = aws;

  async function sealUnder(arn: string, tenantId: string, kekId: string): Promise<Buffer> {
    const made = await aws.client.send(
      new GenerateDataKeyCommand({ KeyId: arn, KeySpec: 'AES_256', EncryptionContext: contextFor(tenantId, kekId) }),
    );
    return Buffer.concat([KMS_FORMAT_BYTE, made.CiphertextBlob!]);
  }

  it('a row labelled v2 but sealed under v1, in a table attached to the target (ALTER TABLE … INHERIT) after verify, is tried by the retire step and keeps v1 from retiring', async () => {
    const prefix = `alias/rekey-test/${randomUUID()}/`;
    const settings = { ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix, REKEY_AWS_KMS_RATE: '0' };
    const seeding = KmsKeys.fromEnv(settings);
    await generateKek(seeding, 'v1');
    await aws.db.pool.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
    await new KekRegistry(aws.db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(seeding, 'v1'));
    seeding.close();
    const v1 = (await aws.client.send(new DescribeKeyCommand({ KeyId: `${prefix}kek-v1` }))).KeyMetadata!.Arn!;
    const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
    const sealed = await Promise.all(ids.map((id) => sealUnder(v1, id, 'v1')));
    await aws.db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids, sealed],
    );
    // Before the rotation: a staging table of the same shape (a restore of some tenants), holding a row labelled v2
    // whose DEK is sealed under v1. Its xmin is older than anything the rotation does.
    const victim = 'tenant-restored';
    await aws.db.pool.query('DROP TABLE IF EXISTS rekey.tenant_deks_staged');
    await aws.db.pool.query('CREATE TABLE rekey.tenant_deks_staged (LIKE rekey.tenant_deks INCLUDING ALL)');
    await aws.db.pool.query(
      `INSERT INTO rekey.tenant_deks_staged (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`,
      [victim, await sealUnder(v1, victim, 'v1')],
    );

    const proxy = await throttlingProxy(moto.server.endpoint, 0);
    const keys = KmsKeys.fromEnv({ ...settings, AWS_ENDPOINT_URL: proxy.endpoint });
    await keys.reload();
    const activities = createActivities({ db: aws.db.pool, keys });
    const retireKek = activities.retireKek.bind(activities);
    const seen: { refused?: unknown; attached?: boolean } = {};
    activities.retireKek = async (args) => {
      // After verify, before the retire step: the staged table is attached to the target's table.
      if (!seen.attached) {
        await aws.db.pool.query('ALTER TABLE rekey.tenant_deks_staged INHERIT rekey.tenant_deks');
        seen.attached = true;
      }
      try {
        return await retireKek(args);
      } catch (err) {
        seen.refused = err;
        throw err;
      }
    };
    try {
      await runRotation(
        temporal.env,
        activities,
        aws.db.pool,
        { from: 'v1', to: 'new', batchSize: 20, gracePeriod: '1d' },
        { timeoutMs: 200_000 },
      ).catch((err: unknown) => ({ failed: err }));
      // The target's table now shows the victim, labelled v2, and only v1 opens it.
      const { rows } = await aws.db.pool.query<{ kek_id: string }>(
        'SELECT kek_id FROM rekey.tenant_deks WHERE tenant_id = $1',
        [victim],
      );
      expect(rows).toEqual([{ kek_id: 'v2' }]);
      expect(seen.attached).toBe(true);
      // v1 must not retire while a row of the target still needs it.
      expect((await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v1'))?.state).not.toBe('retired');
      expect(String(seen.refused)).toContain(victim);
    } finally {
      keys.close();
      await proxy.close();
      await aws.db.pool.query('ALTER TABLE rekey.tenant_deks_staged NO INHERIT rekey.tenant_deks').catch(() => {});
      await aws.db.pool.query('DROP TABLE IF EXISTS rekey.tenant_deks_staged');
    }
  }, 240_000);
});

/** A staging table of rekey.tenant_deks's shape holding one row, attached to it by the returned hook (once). */
async function staged(db: import('pg').Pool, victim: string, value: Buffer): Promise<() => Promise<void>> {
  await db.query('DROP TABLE IF EXISTS rekey.tenant_deks_staged');
  await db.query('CREATE TABLE rekey.tenant_deks_staged (LIKE rekey.tenant_deks INCLUDING ALL)');
  await db.query(`INSERT INTO rekey.tenant_deks_staged (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`, [
    victim,
    value,
  ]);
  let attached = false;
  return async () => {
    if (attached) return;
    await db.query('ALTER TABLE rekey.tenant_deks_staged INHERIT rekey.tenant_deks');
    attached = true;
  };
}

/** retireKek with `before` run first, and what it threw kept. */
function beforeRetire(activities: Activities, before: () => Promise<void>): { refused?: unknown } {
  const seen: { refused?: unknown } = {};
  const retireKek = activities.retireKek.bind(activities);
  activities.retireKek = async (args) => {
    await before();
    try {
      return await retireKek(args);
    } catch (err) {
      seen.refused = err;
      throw err;
    }
  };
  return seen;
}

describe('quota6 adversary: retire after verify in a Vault Transit keyspace, rows that join the table after verify', () => {
  const servers = useVaultServers();
  const contextOf = (tenantId: string) => Buffer.from(`rekey/transit-dek/v1\0${tenantId}`).toString('base64');

  it('a row labelled v2 but sealed under Transit v1, in a table attached to the target after verify, is tried by the retire step and keeps v1 from retiring', async () => {
    const key = `rekey-${randomUUID()}`;
    const env = transitEnv(servers.vault.env, key);
    const seeding = VaultTransitKeys.fromEnv(env);
    await freshKeyspace(servers.db.pool, seeding);
    seeding.close();
    const victim = 'tenant-restored';
    const ids = [...Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`), victim];
    const encrypted = await vaultRequest<{ data: { batch_results: { ciphertext: string }[] } }>(
      servers.vault,
      'POST',
      `transit/encrypt/${key}`,
      {
        key_version: 1,
        batch_input: ids.map((id) => ({ plaintext: randomBytes(32).toString('base64'), context: contextOf(id) })),
      },
    );
    const wrapped = encrypted.data.batch_results.map((r) =>
      Buffer.concat([Buffer.from([0x03]), Buffer.from(r.ciphertext)]),
    );
    await servers.db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids.slice(0, TENANTS), wrapped.slice(0, TENANTS)],
    );
    const attach = await staged(servers.db.pool, victim, wrapped[TENANTS]!);
    const keys = VaultTransitKeys.fromEnv(env);
    await keys.reload();
    const activities = createActivities({ db: servers.db.pool, keys });
    const seen = beforeRetire(activities, attach);
    try {
      await runRotation(
        servers.temporal.env,
        activities,
        servers.db.pool,
        { from: 'v1', to: 'new', batchSize: 20, gracePeriod: '1d' },
        { timeoutMs: 200_000 },
      ).catch((err: unknown) => ({ failed: err }));
      const { rows } = await servers.db.pool.query<{ kek_id: string }>(
        'SELECT kek_id FROM rekey.tenant_deks WHERE tenant_id = $1',
        [victim],
      );
      expect(rows).toEqual([{ kek_id: 'v2' }]);
      expect((await new KekRegistry(servers.db.pool, BUILTIN_TARGET).get('v1'))?.state).not.toBe('retired');
      expect(String(seen.refused)).toContain(victim);
    } finally {
      keys.close();
      await servers.db.pool.query('ALTER TABLE rekey.tenant_deks_staged NO INHERIT rekey.tenant_deks').catch(() => {});
      await servers.db.pool.query('DROP TABLE IF EXISTS rekey.tenant_deks_staged');
    }
  }, 240_000);
});
