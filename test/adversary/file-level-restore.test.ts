// Adversary of the marks the retire step trusts (issue 35, adversary7): a file-level restore of the whole cluster (the
// server stopped, a data directory taken earlier put back, the server started) keeps the cluster's system identifier,
// its timeline, every database's oid and every table's oid. What verify's mark (src/rotation/verified-mark.ts) and the
// pre-pass's checkpoint (src/rewrap/pre-pass.ts) compared to tell "the same database, nothing rewritten since" stayed
// equal, while rows went back to older contents whose xmin is older than either mark. Each test makes a cluster of
// its own (initdb, a Unix socket in its own directory) so that it can stop it and put a copy back.
import { randomUUID } from 'node:crypto';
import { DescribeKeyCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { MockActivityEnvironment, type TestWorkflowEnvironment } from '@temporalio/testing';
import { randomBytes } from 'node:crypto';
import type { Pool } from 'pg';
import { describe, expect, it } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { vaultRequest } from '../../src/dev/vault';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { createDatabase } from '../../src/dev/databases';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { generateKek } from '../../src/keyring/keyring';
import type { PrePassCheckpoint } from '../../src/rewrap/pre-pass';
import { KekRegistry } from '../../src/store/kek-registry';
import { TargetStore } from '../../src/store/target-store';
import { verifiedFails } from '../../src/rotation/verified-mark';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { RetireRefusedError } from '../../src/errors';
import { compileFormat } from '../../src/codec/sealed-format';
import { REKEY_PRESET } from '../../src/targets/presets';
import { useMoto } from '../helpers/aws';
import { migrateDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { useOwnCluster } from '../helpers/own-cluster';
import { runRotation } from '../helpers/rotation-run';
import { fingerprintIn } from '../helpers/store-keys';
import { checkSecrets, createTalosSchema, encryptSecret, seedSecrets } from '../helpers/talos';
import { useTimeSkippingEnv } from '../helpers/temporal';
import { transitEnv } from '../helpers/store-env';
import { useVault } from '../helpers/vault';

const TENANTS = 40;
const KMS_FORMAT_BYTE = Buffer.from([0x02]);
const contextFor = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });

/** The next transaction id the server will assign (64 bits). */
async function nextXid(db: Pool): Promise<bigint> {
  const { rows } = await db.query<{ next: string }>('SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS next');
  return BigInt(rows[0]!.next);
}

/** Commits transactions until the server's next transaction id is past `past` (what an application's traffic does). */
async function burnXidsPast(db: Pool, past: bigint): Promise<void> {
  const missing = past - (await nextXid(db)) + 10n;
  if (missing > 0n) {
    await db.query(`DO $$ BEGIN FOR i IN 1..${missing} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$`);
  }
  expect(await nextXid(db)).toBeGreaterThan(past);
}

/**
 * `activities` with `beforeVerify` run once before verify's first part and `beforeRetire` once before the retire
 * step's first attempt; what the retire step threw is kept.
 */
function restoredBetweenVerifyAndRetire(
  activities: Activities,
  hooks: { beforeVerify(): Promise<void>; beforeRetire(): Promise<void> },
): { copied?: boolean; restored?: boolean; refused?: unknown } {
  const seen: { copied?: boolean; restored?: boolean; refused?: unknown } = {};
  const checkLabelled = activities.checkLabelled.bind(activities);
  activities.checkLabelled = async (args) => {
    if (!seen.copied) {
      await hooks.beforeVerify();
      seen.copied = true;
    }
    return checkLabelled(args);
  };
  const retireKek = activities.retireKek.bind(activities);
  activities.retireKek = async (args) => {
    if (!seen.restored) {
      await hooks.beforeRetire();
      seen.restored = true;
    }
    try {
      return await retireKek(args);
    } catch (err) {
      seen.refused = err;
      throw err;
    }
  };
  return seen;
}

/**
 * The scenario of finding 1 on a seeded keyspace: after the rewrap, before verify, a stale instance writes a row
 * labelled v2 with its DEK sealed under v1; the nightly file-level backup of the cluster is taken; the row is repaired
 * (sealed under v2, as its label says) before verify reads it. During the grace period the cluster is restored from
 * that backup (same system identifier, timeline, database and table oids), and the application's traffic carries the
 * transaction counter past where it was. The rotation must not retire v1, and its retire step names the row.
 */
async function restoredRowKeepsV1(
  context: {
    cluster: ReturnType<typeof useOwnCluster>;
    env: TestWorkflowEnvironment;
    db: Pool;
    activities: Activities;
  },
  sealVictim: (under: 'v1' | 'v2', tenantId: string) => Promise<Buffer>,
): Promise<void> {
  const { cluster, db, activities } = context;
  const victim = 'tenant-stale';
  const seen = restoredBetweenVerifyAndRetire(activities, {
    beforeVerify: async () => {
      await db.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`, [
        victim,
        await sealVictim('v1', victim),
      ]);
      await cluster.takeCopy();
      await db.query('UPDATE rekey.tenant_deks SET wrapped_dek = $2 WHERE tenant_id = $1', [
        victim,
        await sealVictim('v2', victim),
      ]);
    },
    beforeRetire: async () => {
      const before = await nextXid(db);
      await cluster.restoreCopy();
      await burnXidsPast(db, before);
    },
  });
  await runRotation(
    context.env,
    activities,
    db,
    { from: 'v1', to: 'new', batchSize: 20, gracePeriod: '1d' },
    { timeoutMs: 200_000 },
  ).catch((err: unknown) => ({ failed: err }));
  expect(seen.copied && seen.restored).toBe(true);
  // The restored row: labelled v2, its DEK opens only under v1.
  const { rows } = await db.query<{ kek_id: string }>('SELECT kek_id FROM rekey.tenant_deks WHERE tenant_id = $1', [
    victim,
  ]);
  expect(rows).toEqual([{ kek_id: 'v2' }]);
  expect((await new KekRegistry(db, BUILTIN_TARGET).get('v1'))?.state).not.toBe('retired');
  expect(String(seen.refused)).toContain(victim);
}

describe('adversary7: a file-level restore of the whole cluster (same system identifier and timeline)', () => {
  const cluster = useOwnCluster();
  const moto = useMoto();
  const temporal = useTimeSkippingEnv();
  const vault = useVault();

  it("Finding 1: a row a file-level restore between verify and retire put back to an older content (labelled v2, sealed under v1), once the transaction counter passed verify's mark, is tried by retire's pre-pass and keeps v1 from retiring (KMS)", async () => {
    const db = await createDatabase(cluster.url, `rekey_restore_${randomBytes(4).toString('hex')}`, 8);
    const kms = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
    const prefix = `alias/rekey-test/${randomUUID()}/`;
    const settings = { ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix, REKEY_AWS_KMS_RATE: '0' };
    const sealUnder = async (kekId: string, tenantId: string) => {
      const made = await kms.send(
        new GenerateDataKeyCommand({
          KeyId: `${prefix}kek-${kekId}`,
          KeySpec: 'AES_256',
          EncryptionContext: contextFor(tenantId, kekId),
        }),
      );
      return Buffer.concat([KMS_FORMAT_BYTE, made.CiphertextBlob!]);
    };
    const keys = KmsKeys.fromEnv(settings);
    try {
      await generateKek(keys, 'v1');
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
      await kms.send(new DescribeKeyCommand({ KeyId: `${prefix}kek-v1` }));
      const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
      const sealed = await Promise.all(ids.map((id) => sealUnder('v1', id)));
      await db.pool.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
        [ids, sealed],
      );
      await keys.reload();
      const activities = createActivities({ db: db.pool, keys });
      await restoredRowKeepsV1({ cluster, env: temporal.env, db: db.pool, activities }, sealUnder);
    } finally {
      keys.close();
      kms.destroy();
      await db.drop();
    }
  }, 300_000);

  it("Finding 1, Vault Transit: a row a file-level restore between verify and retire put back to an older content (labelled v2, sealed under Transit v1), once the transaction counter passed verify's mark, is tried by retire's pre-pass and keeps v1 from retiring", async () => {
    const db = await createDatabase(cluster.url, `rekey_restore_${randomBytes(4).toString('hex')}`, 8);
    const key = `rekey-${randomUUID()}`;
    const env = transitEnv(vault.server.env, key);
    const contextOf = (tenantId: string) => Buffer.from(`rekey/transit-dek/v1\0${tenantId}`).toString('base64');
    // The stored form written with Vault's API alone: format byte 0x03, then Transit's ciphertext.
    const sealUnder = async (version: number, ids: string[]) => {
      const encrypted = await vaultRequest<{ data: { batch_results: { ciphertext: string }[] } }>(
        vault.server,
        'POST',
        `transit/encrypt/${key}`,
        // The version in each item: Vault's batch encrypt takes no key_version of the request's own.
        {
          batch_input: ids.map((id) => ({
            plaintext: randomBytes(32).toString('base64'),
            context: contextOf(id),
            key_version: version,
          })),
        },
      );
      return encrypted.data.batch_results.map((r) => Buffer.concat([Buffer.from([0x03]), Buffer.from(r.ciphertext)]));
    };
    const seeding = VaultTransitKeys.fromEnv(env);
    const keys = VaultTransitKeys.fromEnv(env);
    try {
      await generateKek(seeding, 'v1');
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(seeding, 'v1'));
      const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
      await db.pool.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
        [ids, await sealUnder(1, ids)],
      );
      await keys.reload();
      const activities = createActivities({ db: db.pool, keys });
      await restoredRowKeepsV1(
        { cluster, env: temporal.env, db: db.pool, activities },
        async (under, tenantId) => (await sealUnder(under === 'v1' ? 1 : 2, [tenantId]))[0]!,
      );
    } finally {
      seeding.close();
      keys.close();
      await db.drop();
    }
  }, 300_000);

  it("Finding 2: secrets a file-level restore between the retire step's pre-pass and its retried attempt put back under v1 (labelled v1, sealed under v1) keep v1 from retiring: the retried attempt proves every row under the lock, not only those written since the pre-pass's mark (Talos)", async () => {
    const db = await createDatabase(cluster.url, `rekey_restore_${randomBytes(4).toString('hex')}`, 8, {
      migrate: false,
    });
    try {
      await createTalosSchema(db.pool);
      await migrateDatabase(db.pool);
      const [v1, v2] = [randomBytes(32), randomBytes(32)];
      const env = {
        TALOS_KEK_v1: v1.toString('base64url'),
        TALOS_KEK_v2: v2.toString('base64url'),
        TALOS_CURRENT_KEK_ID: 'v2',
      };
      const registry = new KekRegistry(db.pool, 'talos');
      await registry.seedActive('v1', kekFingerprint(v1));
      await registry.register('v2', kekFingerprint(v2));
      await registry.promote('v1', 'v2');
      const secrets = await seedSecrets(db.pool, v1, 'v1', 50, 'v1');
      // The nightly file-level backup, taken while every secret is still under v1.
      await cluster.takeCopy();
      // Talos moves its secrets to v2 (its own rewrap: sealed under v2, key_id v2).
      for (const secret of secrets) {
        const stored = encryptSecret(v2, secret.id, secret.name, secret.value, 'v1');
        await db.pool.query(
          "UPDATE public.secrets SET ciphertext = $2, nonce = $3, tag = $4, aad = $5, key_id = 'v2' WHERE id = $1",
          [secret.id, stored.ciphertext, stored.nonce, stored.tag, stored.aad],
        );
      }
      const activities = createActivities({ db: db.pool, keys: testKeys(['v1']), env });
      const args = { target: 'talos', from: 'v1', restoreWindowMs: 86_400_000 };

      // Attempt 1: the pre-pass proves every secret and records stage 'done'; the worker is lost before the lock.
      let checkpoint: PrePassCheckpoint | undefined;
      const first = new MockActivityEnvironment({ attempt: 1 });
      first.on('heartbeat', (details: PrePassCheckpoint) => {
        checkpoint = details;
        if (details.stage === 'done') throw new Error('the worker was lost after the pre-pass');
      });
      const lost = await first
        .run((input: typeof args) => activities.retireKek(input), args)
        .catch((err: unknown) => err);
      expect(String(lost)).toContain('the worker was lost after the pre-pass');
      expect(checkpoint?.stage).toBe('done');

      // The cluster is restored from that backup: every secret is back under v1, with an xmin older than the mark.
      await cluster.restoreCopy();
      expect(await checkSecrets(db.pool, v1, 'v1', secrets)).toEqual([]);

      // Attempt 2 resumes from the heartbeat's checkpoint: it must not retire v1 while 50 secrets need it.
      const refused = await new MockActivityEnvironment({ attempt: 2, heartbeatDetails: checkpoint })
        .run((input: typeof args) => activities.retireKek(input), args)
        .catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(RetireRefusedError);
      expect(String(refused)).toContain("KEK 'v1' still wraps 50 secret(s)");
      expect((await registry.require('v1')).state).toBe('decrypt_only');
      expect(await checkSecrets(db.pool, v1, 'v1', secrets)).toEqual([]);
    } finally {
      await db.drop();
    }
  }, 300_000);

  it("a restart of the server alone changes the scope verify's mark is read in, and a mark of a build before this one (a scope without the server's start) is not taken as this database's", async () => {
    const db = await createDatabase(cluster.url, `rekey_restore_${randomBytes(4).toString('hex')}`, 8);
    try {
      const store = new TargetStore(db.pool, REKEY_PRESET, compileFormat(REKEY_PRESET.format));
      const before = await store.markNow();
      expect(before?.scope).toMatch(/\/started \d+;/);
      const verified = { kekId: 'v2', fingerprint: 'fp', mark: before!.next, scope: before!.scope };
      expect(verifiedFails(verified, { kekId: 'v2', fingerprint: 'fp' }, await store.markNow())).toBeUndefined();
      // An older build's mark: the same cluster, timeline, database and relations, without the server's start.
      const older = { ...verified, scope: before!.scope.replace(/started \d+;/, '') };
      expect(verifiedFails(older, { kekId: 'v2', fingerprint: 'fp' }, await store.markNow())).toContain(
        'the database is not the one verify read',
      );
      await cluster.takeCopy();
      const after = await store.markNow();
      expect(after?.scope).not.toBe(before?.scope);
      expect(verifiedFails(verified, { kekId: 'v2', fingerprint: 'fp' }, after)).toContain(
        'the database is not the one verify read',
      );
    } finally {
      await db.drop();
    }
  }, 120_000);
});
