// Issue 25: "a history: `rekey history [target]` (and an admin route) listing past rotations and migrations with
// from → to, start, end, outcome and counts", on a Mycelium-shaped database (the keyspace that has both), with the
// built CLI and the admin API against the dev server; and kek-status's restore deadline of the KEK it retired.
import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { History } from '../../src/client/history';
import { migrationWorkflowIdOf, rotationWorkflowId } from '../../src/rotation/identity';
import { TargetRuntimes } from '../../src/targets/runtime';
import type { rotateKek } from '../../src/workflows';
import { runRekeyAt, type CliResult } from '../helpers/cli';
import { confirmRetireWhenAsked, MYCELIUM_ROTATE_1_TO_2 } from '../helpers/confirm';
import { createTestDatabase, migrateDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import {
  createMyceliumSchema,
  insertLegacyTotpUser,
  kekOf,
  seedMyceliumTenants,
  SYSTEM_TENANT,
} from '../helpers/mycelium';
import { createDevServerEnv, progressUntil } from '../helpers/temporal';

const TOKEN = 'history-token-0123456789';
const TENANTS = 60;

describe('rekey history and GET /admin/v1/secrets/rotations: the rotations and migrations of a keyspace', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let served: ServedWorker;
  let targets: TargetRuntimes;
  let api: FastifyInstance;
  const taskQueue = 'rekey-history';
  const [gen1, gen2] = [randomUUID(), randomUUID()];

  function rekey(...args: string[]): Promise<CliResult> {
    return rekeyAt(env.address, ...args);
  }

  function rekeyAt(address: string, ...args: string[]): Promise<CliResult> {
    return runRekeyAt(address, taskQueue, args, {
      DATABASE_URL: db.url,
    });
  }

  /** The ids of the target's rotations and migrations in this database (its keyspace's). */
  let ids: { rotation: string; migration: string };
  const rotation = () => env.client.workflow.getHandle<typeof rotateKek>(ids.rotation);
  const rotate = [...MYCELIUM_ROTATE_1_TO_2, '--grace', '1s'];

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase({ migrate: false });
    await createMyceliumSchema(db.pool);
    await seedMyceliumTenants(db.pool, TENANTS, kekOf(gen1), 1);
    await migrateDatabase(db.pool);
    const keys = testKeys(['v1']);
    targets = new TargetRuntimes({ db: db.pool, keys, env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 } });
    served = await serveWorker(env, { taskQueue, db: db.pool, keys, targets });
    const keyspace = await targets.keyspace('mycelium');
    ids = {
      rotation: rotationWorkflowId('mycelium', keyspace),
      migration: migrationWorkflowIdOf('mycelium', keyspace),
    };
    api = await served.adminApi(TOKEN, { defaultTarget: 'mycelium' });
  });

  afterAll(async () => {
    await served?.stop();
    await db?.drop();
    await env?.teardown();
  });

  it('history after two rotations and one migration lists each, newest first, with from → to, start, end, outcome and counts; the CLI and the API agree, and rekey.run_history keeps them once Temporal has forgotten them', async () => {
    // 1. A rotation aborted while it waits for the operator to discard the old token_secret.
    const first = await rekey(...rotate);
    expect(first, first.stderr).toMatchObject({ code: 0 });
    await progressUntil(rotation(), (p) => p.waiting?.step === 'retire', { withinMs: 90_000 });
    const aborted = await rekey('abort', 'mycelium', '--reason', 'gateway-3 still reads generation 1');
    expect(aborted, aborted.stderr).toMatchObject({ code: 0 });

    // 2. The same rotation again, taken up where the first stopped, confirmed and finished.
    const second = rekey(...rotate, '--wait');
    await confirmRetireWhenAsked(rekey, rotation(), 'mycelium', 'old secret discarded');
    const done = await second;
    expect(done, done.stderr).toMatchObject({ code: 0 });

    // 3. A migration of a v1 value an old gateway wrote meanwhile.
    await db.pool.query(`INSERT INTO public.tenant (id, name) VALUES ($1, 'system')`, [SYSTEM_TENANT]);
    await insertLegacyTotpUser(db.pool, kekOf(gen2), 'ops@example.com', 'JBSWY3DPEHPK3PXP');
    const migrated = await rekey('migrate-dek', '--target', 'mycelium', '--wait');
    expect(migrated, migrated.stderr).toMatchObject({ code: 0 });

    const listed = await rekey('--json', 'history', 'mycelium');
    expect(listed, listed.stderr).toMatchObject({ code: 0 });
    const history = JSON.parse(listed.stdout) as History;
    expect(history.temporalUnavailable).toBeUndefined();
    expect(history.runs.map((r) => [r.kind, r.from, r.to, r.state, r.rows, r.source])).toEqual([
      ['migration', undefined, '2', 'succeeded', { total: 1, moved: 1, unreadable: 0 }, 'rekey'],
      ['rotation', '1', '2', 'succeeded', { total: 0, moved: 0, unreadable: 0 }, 'rekey'],
      ['rotation', '1', '2', 'aborted', { total: TENANTS, moved: TENANTS, unreadable: 0 }, 'rekey'],
    ]);
    const [migration, succeeded, abortedRun] = history.runs;
    expect(abortedRun!.reason).toMatch(/^gateway-3 still reads generation 1; both '1' and '2' still unwrap/);
    expect(succeeded!.reason).toBe("'1' → '2': 0 of 0 rows moved, verified; '1' retired");
    expect(migration!.reason).toBe("1 of 1 values moved under the tenants' DEKs; 1 DEK(s) provisioned");
    // Newest first, each ended before the next began.
    for (const run of history.runs) expect(Date.parse(run.endedAt!)).toBeGreaterThanOrEqual(Date.parse(run.startedAt));
    expect(Date.parse(abortedRun!.endedAt!)).toBeLessThanOrEqual(Date.parse(succeeded!.startedAt));
    expect(Date.parse(succeeded!.endedAt!)).toBeLessThanOrEqual(Date.parse(migration!.startedAt));
    expect(abortedRun!.opId).toMatch(new RegExp(`^${ids.rotation.replaceAll('.', '\\.')}@[0-9a-f-]{36}$`));
    expect(migration!.opId).toMatch(new RegExp(`^${ids.migration.replaceAll('.', '\\.')}@[0-9a-f-]{36}$`));

    const human = (await rekey('history', '--target', 'mycelium')).stdout.split('\n');
    expect(human[0]).toBe(
      "history of target 'mycelium', newest first (started, ended, kind, KEKs, outcome, counts, op id):",
    );
    expect(human[1]).toContain(
      `${migration!.startedAt}  ${migration!.endedAt}  migration  v1 values → DEKs (KEK 2)  Succeeded  1 of 1 values moved  ${migration!.opId}`,
    );
    expect(human[2]).toContain('rotation   1 → 2  Succeeded  0 of 0 rows moved');
    expect(human[3]).toContain(`rotation   1 → 2  Aborted  ${TENANTS} of ${TENANTS} rows moved  ${abortedRun!.opId}`);
    expect(human[4]).toBe(`      ${abortedRun!.reason}`);

    const response = await api.inject({
      method: 'GET',
      url: '/admin/v1/secrets/rotations?target=mycelium',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(response.statusCode, response.body).toBe(200);
    const body = response.json<{ target: string; rotations: Record<string, unknown>[] }>();
    expect(body.target).toBe('mycelium');
    expect(body.rotations).toEqual(
      history.runs.map((run) => ({
        op_id: run.opId,
        kind: run.kind,
        from: run.from ?? null,
        to: run.to ?? null,
        started_at: run.startedAt,
        ended_at: run.endedAt,
        state: run.state,
        label: run.label,
        reason: run.reason,
        rows_total: run.rows.total,
        rows_moved: run.rows.moved,
        rows_unreadable: run.rows.unreadable,
        source: 'rekey',
      })),
    );

    // A Temporal that has never seen these runs (past its retention, a new cluster): the table still lists them.
    const fresh = await createDevServerEnv();
    try {
      const later = JSON.parse((await rekeyAt(fresh.address, '--json', 'history', 'mycelium')).stdout) as History;
      expect(later.runs).toEqual(history.runs);
    } finally {
      await fresh.teardown();
    }
  });

  it("kek-status shows the retired KEK's restore deadline, in the CLI and the admin API", async () => {
    const { rows } = await db.pool.query<{ until: Date }>(
      `SELECT restorable_until AS until FROM rekey.keks WHERE target = 'mycelium' AND kek_id = '1' AND state = 'retired'`,
    );
    const until = rows[0]!.until.toISOString();
    const human = (await rekey('kek-status', '--target', 'mycelium')).stdout;
    expect(human).toMatch(new RegExp(` {2}1 +retired +0 DEKs .*restorable until ${until} \\(29d 23h from now\\)`));
    const response = await api.inject({
      method: 'GET',
      url: '/admin/v1/secrets/kek-status?target=mycelium',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(response.json<{ keks: unknown[] }>().keks).toContainEqual(
      expect.objectContaining({ kek_id: '1', state: 'retired', restorable_until: until }),
    );
  });
});
