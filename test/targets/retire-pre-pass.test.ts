// The retire and destroy proofs' pre-pass (src/rewrap/pre-pass.ts): every row proved outside the KEK's registry row
// lock, in batches whose checkpoint rides the step's heartbeat; under the lock, only the rows written since it began.
// Against PostgreSQL, and the time-skipping server where the step's retry is Temporal's.
import { randomBytes } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { inlineRowCrypto, type RowCrypto } from '../../src/crypto/row-crypto';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { RetireRefusedError } from '../../src/errors';
import type { PrePassCheckpoint } from '../../src/rewrap/pre-pass';
import { KekRegistry } from '../../src/store/kek-registry';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { RotationFixture } from '../helpers/rotation-fixture';
import { createTalosSchema, encryptSecret, seedSecrets } from '../helpers/talos';
import { useTimeSkippingEnv } from '../helpers/temporal';

/** The activity under way, or undefined outside one. */
function currentActivity(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

describe('the retire proof runs its pre-pass outside the lock, resumable from its heartbeat', () => {
  const server = useTimeSkippingEnv();

  it("a retire whose first attempt is killed mid-pre-pass resumes from its checkpoint: the retry tries only the rows after the checkpoint's cursor, and under the lock none (nothing was written since)", async () => {
    const fixture = await RotationFixture.create({ tenants: 6_000 });
    try {
      // What the retire step tried, by attempt, as the crypto saw the rows; its first attempt dies in its third batch.
      const tried = new Map<number, string[]>();
      const crypto: RowCrypto = {
        ...inlineRowCrypto,
        async check(codec, kek, rows) {
          const info = currentActivity()?.info;
          if (info?.activityType !== 'retireKek') return inlineRowCrypto.check(codec, kek, rows);
          const ids = tried.get(info.attempt) ?? [];
          tried.set(info.attempt, ids);
          if (info.attempt === 1 && ids.length >= 4_000)
            throw new Error('the worker died in the middle of the pre-pass');
          const answer = await inlineRowCrypto.check(codec, kek, rows);
          ids.push(...rows.map((row) => String(row.$id)));
          return answer;
        },
      };
      const real = createActivities({ db: fixture.db.pool, keys: fixture.keys, crypto });
      const started: { attempt: number; checkpoint?: PrePassCheckpoint }[] = [];
      const activities = {
        ...real,
        retireKek(args: Parameters<typeof real.retireKek>[0]) {
          const { info } = Context.current();
          started.push({ attempt: info.attempt, checkpoint: info.heartbeatDetails as PrePassCheckpoint | undefined });
          return real.retireKek(args);
        },
      };
      const report = await fixture.execute(server.env, { from: 'v1', to: 'v2', gracePeriod: '1d' }, activities);
      expect(report.outcome).toBe('completed');
      expect(await fixture.kekState('v1')).toBe('retired');

      expect(started.map((s) => s.attempt)).toEqual([1, 2]);
      const checkpoint = started[1]!.checkpoint!;
      expect(checkpoint).toMatchObject({ kind: 'proof-pre-pass', kekId: 'v1', stage: 'others' });
      const { rows } = await fixture.db.pool.query<{ id: string }>(
        'SELECT tenant_id AS id FROM rekey.tenant_deks ORDER BY tenant_id',
      );
      const all = rows.map((r) => r.id);
      expect(all).toHaveLength(6_000);
      // The checkpoint is at least the first batch's last row (2,000 a batch), and no further than the attempt got.
      const at = all.indexOf(checkpoint.cursor);
      expect(at).toBeGreaterThanOrEqual(1_999);
      expect(tried.get(1)).toEqual(all.slice(0, 4_000));
      // The retry went on after the checkpoint: each row after it once, none before it, and none under the lock.
      expect(tried.get(2)).toEqual(all.slice(at + 1));
      expect(checkpoint.others.tried).toBe(at + 1);
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });
});

describe('the retire proof under the lock proves the rows written since its pre-pass began', () => {
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
  });
  const [v1, v2] = [randomBytes(32), randomBytes(32)];
  const env = {
    TALOS_KEK_v1: v1.toString('base64url'),
    TALOS_KEK_v2: v2.toString('base64url'),
    TALOS_CURRENT_KEK_ID: 'v2',
  };

  it("a row written wrongly between the pre-pass and the lock (labelled 'v2', sealed under 'v1') is still caught: retire is refused, naming it, and 'v1' stays decrypt-only", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    databases.push(db);
    const registry = new KekRegistry(db.pool, 'talos');
    await registry.seedActive('v1', kekFingerprint(v1));
    await registry.register('v2', kekFingerprint(v2));
    await registry.promote('v1', 'v2');
    const secrets = await seedSecrets(db.pool, v2, 'v2', 2_500, 'v1');
    const activities = createActivities({ db: db.pool, keys: testKeys(['v1']), env });

    // Another transaction holds v1's registry row: the step's pre-pass runs, then the step waits for the lock.
    const holder = await db.pool.connect();
    let retire: Promise<unknown> | undefined;
    try {
      await holder.query('BEGIN');
      await holder.query("SELECT 1 FROM rekey.keks WHERE target = 'talos' AND kek_id = 'v1' FOR UPDATE");
      retire = activities
        .retireKek({ target: 'talos', from: 'v1', restoreWindowMs: 86_400_000 })
        .catch((err: unknown) => err);
      await eventually('the retire step waits for the registry row lock, its pre-pass done', async () => {
        const { rows } = await db.pool.query<{ n: string }>(
          "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        return Number(rows[0]!.n) > 0;
      });
      // The application rewrites a secret the pre-pass proved already: under v1, labelled v2.
      const wrong = secrets.reduce((a, b) => (a.id < b.id ? a : b));
      const stored = encryptSecret(v1, wrong.id, wrong.name, wrong.value, 'v1');
      await db.pool.query(
        "UPDATE public.secrets SET ciphertext = $2, nonce = $3, tag = $4, aad = $5, key_id = 'v2' WHERE id = $1",
        [wrong.id, stored.ciphertext, stored.nonce, stored.tag, stored.aad],
      );
      await holder.query('COMMIT');
      const refusal = await retire;
      expect(refusal).toBeInstanceOf(RetireRefusedError);
      expect((refusal as Error).message).toContain(
        `KEK 'v1' still wraps 1 secret(s) in public.secrets: not retiring it. The first 1: ${wrong.id} (its label 'v2' says otherwise, but its value is under 'v1')`,
      );
      expect((await registry.require('v1')).state).toBe('decrypt_only');
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
      await retire;
    }
  });
});
