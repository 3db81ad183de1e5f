// Issue 27 (quota6): a keyspace in AWS KMS pays its quota per trial. Retire's pre-pass does not try again the rows
// verify opened under the active KEK and the database shows unchanged since (their xmin is before verify's mark); any
// row written since, by the application or restored from a backup, is tried as before. Against moto, through a proxy
// that counts what the worker asks KMS.
import { randomUUID } from 'node:crypto';
import { DescribeKeyCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { generateKek } from '../../src/keyring/keyring';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { RetireRefusedError } from '../../src/errors';
import type { LabelCheckOutcome } from '../../src/rotation/label-check';
import { fingerprintIn } from '../helpers/store-keys';
import { throttlingProxy, useAwsServers } from '../helpers/aws';
import { runRotation } from '../helpers/rotation-run';

const TENANTS = 60;
// The stored form as the README documents it, written with the SDK alone: format byte 0x02, then KMS's blob, under
// the encryption context {rekey:tenant, rekey:kek}.
const KMS_FORMAT_BYTE = Buffer.from([0x02]);
const contextFor = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });

describe('retire after verify in a KMS keyspace', () => {
  const aws = useAwsServers((env) => new KMSClient(awsClientConfig(env, 'KMS')));
  const { moto, temporal } = aws;

  /** A keyspace with v1 made by rekey and TENANTS DEKs sealed under it by the test (GenerateDataKey). */
  async function keyspace() {
    const prefix = `alias/rekey-test/${randomUUID()}/`;
    const settings = { ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix, REKEY_AWS_KMS_RATE: '0' };
    const keys = KmsKeys.fromEnv(settings);
    await generateKek(keys, 'v1');
    await aws.db.pool.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
    await new KekRegistry(aws.db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    keys.close();
    const v1 = (await aws.client.send(new DescribeKeyCommand({ KeyId: `${prefix}kek-v1` }))).KeyMetadata!.Arn!;
    const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
    const sealed = await Promise.all(ids.map((id) => sealUnderV1(v1, id)));
    await aws.db.pool.query(
      `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
      [ids, sealed],
    );
    return { settings, v1, prefix };
  }

  async function sealUnderV1(v1: string, tenantId: string): Promise<Buffer> {
    const made = await aws.client.send(
      new GenerateDataKeyCommand({ KeyId: v1, KeySpec: 'AES_256', EncryptionContext: contextFor(tenantId, 'v1') }),
    );
    return Buffer.concat([KMS_FORMAT_BYTE, made.CiphertextBlob!]);
  }

  /**
   * Rotates v1 → v2 with the worker's KMS calls counted; `between` runs after verify and before the retire step (the
   * grace between them), and the ReEncrypt calls of the retire step are counted apart.
   */
  async function rotateWith(settings: Record<string, string>, between: () => Promise<void>) {
    const proxy = await throttlingProxy(moto.server.endpoint, 0);
    const keys = KmsKeys.fromEnv({ ...settings, AWS_ENDPOINT_URL: proxy.endpoint });
    await keys.reload();
    const activities = createActivities({ db: aws.db.pool, keys });
    const retireKek = activities.retireKek.bind(activities);
    const seen: { retireCalls?: number; refused?: unknown } = {};
    activities.retireKek = async (args) => {
      await between();
      const before = proxy.forwarded.get('ReEncrypt') ?? 0;
      try {
        return await retireKek(args);
      } catch (err) {
        seen.refused = err;
        throw err;
      } finally {
        seen.retireCalls = (proxy.forwarded.get('ReEncrypt') ?? 0) - before;
      }
    };
    try {
      const run = await runRotation(
        temporal.env,
        activities,
        aws.db.pool,
        { from: 'v1', to: 'new', batchSize: 50, gracePeriod: '1d' },
        { timeoutMs: 200_000 },
      ).catch((err: unknown) => ({ failed: err }));
      return { run, seen, reEncrypts: proxy.forwarded.get('ReEncrypt') ?? 0 };
    } finally {
      keys.close();
      await proxy.close();
    }
  }

  const labels = async () =>
    (
      await aws.db.pool.query<{ kek_id: string; n: number }>(
        'SELECT kek_id, count(*)::int AS n FROM rekey.tenant_deks GROUP BY kek_id ORDER BY kek_id',
      )
    ).rows;

  it('retire does not try again under v2 the rows verify opened under it and nobody wrote since: the whole rotation costs about two ReEncrypt a row, not three', async () => {
    const { settings } = await keyspace();
    const { run, seen, reEncrypts } = await rotateWith(settings, () => Promise.resolve());
    expect('report' in run && run.report.outcome).toBe('completed');
    expect(await labels()).toEqual([{ kek_id: 'v2', n: TENANTS }]);
    // Without the reuse the pre-pass tried all TENANTS rows under v2 again.
    expect(seen.retireCalls).toBe(0);
    // Rewrap (one each) and verify (one each); nothing else per row (the one more is v2's self-test at provision).
    expect(reEncrypts).toBeGreaterThanOrEqual(2 * TENANTS);
    expect(reEncrypts).toBeLessThanOrEqual(2 * TENANTS + 2);
    expect((await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v1'))?.state).toBe('retired');
  }, 240_000);

  it('a row the application sealed again under v2 between verify and retire is tried again by the retire step, the rows nobody wrote are not', async () => {
    const { settings, prefix } = await keyspace();
    const victim = 'tenant-00003';
    const { run, seen } = await rotateWith(settings, async () => {
      const made = await aws.client.send(
        new GenerateDataKeyCommand({
          KeyId: `${prefix}kek-v2`,
          KeySpec: 'AES_256',
          EncryptionContext: contextFor(victim, 'v2'),
        }),
      );
      await aws.db.pool.query(`UPDATE rekey.tenant_deks SET wrapped_dek = $2 WHERE tenant_id = $1`, [
        victim,
        Buffer.concat([KMS_FORMAT_BYTE, made.CiphertextBlob!]),
      ]);
    });
    expect('report' in run ? run.report.outcome : run.failed).toBe('completed');
    // The pre-pass tried the one row written since verify's mark (once more under the lock only if a transaction of
    // this database was open when the pre-pass began).
    expect(seen.retireCalls).toBeGreaterThanOrEqual(1);
    expect(seen.retireCalls).toBeLessThanOrEqual(2);
    expect((await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v1'))?.state).toBe('retired');
  }, 240_000);

  it('a row the application rewrote between verify and retire, labelled v2 with its value sealed under v1, is tried again and keeps v1 from retiring', async () => {
    const { settings, v1 } = await keyspace();
    const victim = 'tenant-00007';
    const wrong = await sealUnderV1(v1, victim);
    const { run, seen } = await rotateWith(settings, async () => {
      await aws.db.pool.query(`UPDATE rekey.tenant_deks SET wrapped_dek = $2 WHERE tenant_id = $1`, [victim, wrong]);
    });
    expect('failed' in run).toBe(true);
    expect(seen.refused).toBeInstanceOf(RetireRefusedError);
    expect((seen.refused as Error).message).toContain(
      `${victim} (its label 'v2' says otherwise, but its value is under 'v1')`,
    );
    // The row written since verify was tried (at least once, under v2 then v1); the others were not.
    // Tried: the pre-pass found it needs v1, so the step proved every row under the lock, as without the reuse.
    expect(seen.retireCalls).toBeGreaterThanOrEqual(TENANTS);
    expect((await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v1'))?.state).not.toBe('retired');
  }, 240_000);

  it('a row restored from a backup taken before the rotation (labelled v1, its triggers off) between verify and retire is tried by the retire step and keeps v1 from retiring', async () => {
    const { settings } = await keyspace();
    const victim = 'tenant-00011';
    const { rows } = await aws.db.pool.query<{ wrapped_dek: Buffer }>(
      'SELECT wrapped_dek FROM rekey.tenant_deks WHERE tenant_id = $1',
      [victim],
    );
    const backup = rows[0]!.wrapped_dek;
    const { run, seen } = await rotateWith(settings, async () => {
      // As pg_restore --disable-triggers puts a row back: deleted, then inserted as it was, triggers off.
      const client = await aws.db.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(`SET LOCAL session_replication_role = replica`);
        await client.query('DELETE FROM rekey.tenant_deks WHERE tenant_id = $1', [victim]);
        await client.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v1', $2)`, [
          victim,
          backup,
        ]);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    });
    expect('failed' in run).toBe(true);
    expect(seen.refused).toBeInstanceOf(RetireRefusedError);
    expect((seen.refused as Error).message).toContain(`${victim} (its value is under 'v1')`);
    // Tried: the pre-pass found it needs v1, so the step proved every row under the lock, as without the reuse.
    expect(seen.retireCalls).toBeGreaterThanOrEqual(TENANTS);
    expect((await new KekRegistry(aws.db.pool, BUILTIN_TARGET).get('v1'))?.state).not.toBe('retired');
  }, 240_000);

  it('verify’s check heartbeats while a batch waits on a paced KMS, so that its attempt is not taken for lost and its rows tried again', async () => {
    const { settings, v1 } = await keyspace();
    const victim = 'tenant-00001';
    const wrong = await sealUnderV1(v1, victim);
    // A rotation refused at retire leaves v2 active, v1 decrypt-only and every row labelled v2.
    await rotateWith(settings, async () => {
      await aws.db.pool.query(`UPDATE rekey.tenant_deks SET wrapped_dek = $2 WHERE tenant_id = $1`, [victim, wrong]);
    });
    // One batch of every row at 8 calls a second: about 7.5 s, past the check's keep-alive interval (5 s).
    const keys = KmsKeys.fromEnv({ ...settings, REKEY_AWS_KMS_RATE: '8' });
    await keys.reload();
    try {
      const activities = createActivities({ db: aws.db.pool, keys });
      const env = new MockActivityEnvironment();
      const beats: unknown[] = [];
      env.on('heartbeat', (details: unknown) => beats.push(details));
      const outcome: LabelCheckOutcome = await env.run(activities.checkLabelled.bind(activities), {
        from: 'v1',
        to: 'v2',
        after: '',
        batchSize: TENANTS,
        timeBudgetMs: 600_000,
      });
      expect(outcome.checked).toBe(TENANTS);
      expect(outcome.underFrom).toBe(1);
      // The batch's own heartbeat at its end, and at least one while its paced calls ran.
      expect(beats.length).toBeGreaterThanOrEqual(2);
    } finally {
      keys.close();
    }
  }, 240_000);
});
