import { randomBytes } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import type { FastifyInstance } from 'fastify';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { buildAdminServer } from '../../src/admin/server';
import { KekRegistry } from '../../src/store/kek-registry';
import { TargetRuntimes } from '../../src/targets/runtime';
import { configuredCurrentKekId } from '../../src/targets/target';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { rotationWorkflowId } from '../../src/rotation/identity';
import { myceliumShape as publicShape } from '../helpers/mycelium';
import { checkSecrets, createTalosSchema, seedSecrets, TalosGateway, v1Binding } from '../helpers/talos';
import { useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

const TOKEN = 'talos-root-token-0123456789';
const auth = { authorization: `Bearer ${TOKEN}` };

describe("the talos preset, driven as the gateway's runbook says, on a Talos-shaped database", () => {
  const server = useTimeSkippingEnv();
  const keks = { v0: randomBytes(32), v1: randomBytes(32), v2: randomBytes(32) };
  // Runbook steps 1 and 2: TALOS_KEK_v2 added, TALOS_CURRENT_KEK_ID=v2 set, gateway restarted.
  const env: NodeJS.ProcessEnv = {
    TALOS_KEK_v0: keks.v0.toString('base64url'),
    TALOS_KEK_v1: keks.v1.toString('base64url'),
    TALOS_KEK_v2: keks.v2.toString('base64url'),
    TALOS_CURRENT_KEK_ID: 'v2',
  };

  async function withApi<T>(
    db: TestDatabase,
    use: (api: FastifyInstance, taskQueue: string) => Promise<T>,
  ): Promise<T> {
    const taskQueue = `talos-${randomBytes(4).toString('hex')}`;
    const targets = new TargetRuntimes({ db: db.pool, keys: testKeys(['v1']), env });
    const worker = await Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool, keys: testKeys(['v1']), targets, env }),
    });
    const api = await buildAdminServer({
      client: server.env.client,
      targets,
      defaultTarget: 'talos',
      taskQueue,
      token: TOKEN,
      configuredCurrentKekId: (target) => configuredCurrentKekId(targets.definition(target), env),
    });
    try {
      return await worker.runUntil(use(api, taskQueue));
    } finally {
      await api.close();
      await targets.close();
    }
  }

  function statusUntil(
    api: FastifyInstance,
    statusUrl: string,
    done: (status: Record<string, unknown>) => boolean,
  ): Promise<Record<string, unknown>> {
    let last: Record<string, unknown> | undefined;
    return eventually(
      `the rotation's status at ${statusUrl} reaching what the test waits for`,
      async () => {
        last = (await api.inject({ method: 'GET', url: statusUrl, headers: auth })).json<Record<string, unknown>>();
        return done(last) && last;
      },
      { describe: () => `last status: ${JSON.stringify(last)}` },
    );
  }

  it('rotate-all with no body, as in step 3: every secret (any length, v1- or name-bound) reads with v2 alone, counters as seeded, Talos fields in rotation-status and kek-status, no column added', async () => {
    const { db, shape } = await createApplicationDatabase(createTalosSchema, publicShape);
    try {
      const v1Bound = await seedSecrets(db.pool, keks.v1, 'v1', 200, 'v1');
      const nameBound = await seedSecrets(db.pool, keks.v1, 'v1', 30, 'name');
      const onV2 = await seedSecrets(db.pool, keks.v2, 'v2', 20, 'v1');
      const all = [...v1Bound, ...nameBound, ...onV2];
      const before = await db.pool.query<{ id: string; version: number; updated_at: Date }>(
        'SELECT id, version, updated_at FROM public.secrets',
      );
      // The restarted gateway reads everything and updates secrets already on v2, under v2: it moves no count.
      const gateway = new TalosGateway(db.pool, keks, 'v2', all, onV2);
      gateway.start({ create: false });

      const final = await withApi(db, async (api) => {
        const started = await api.inject({ method: 'POST', url: '/admin/v1/secrets/rotate-all', headers: auth });
        expect(started.statusCode).toBe(202);
        const body = started.json<{ op_id: string; status: string; status_url: string; message: string }>();
        // Answered once validate accepted it: 'current' is named.
        expect(body).toMatchObject({
          status: 'running',
          message: "rotation of target 'talos' started ('v1' → 'v2')",
          from: 'v1',
          to: 'v2',
        });
        // TALOS_CURRENT_KEK_ID=v2 already: promotion counts as done, and the rewrap starts at once.
        await statusUntil(api, body.status_url, (s) => s.phase === 'grace');
        await gateway.stop();
        await server.env.sleep('7d');
        // Step 6 is Talos's: the run waits until the operator says TALOS_KEK_v1 is gone from every gateway.
        const waiting = await statusUntil(
          api,
          body.status_url,
          (s) => (s.waiting as { step?: string })?.step === 'retire',
        );
        expect(waiting).toMatchObject({
          status: 'running',
          waiting: {
            kind: 'application',
            instructions: "remove TALOS_KEK_v1 from every gateway's environment and restart it",
          },
        });
        const confirmed = await api.inject({
          method: 'POST',
          url: `/admin/v1/secrets/rotation/${encodeURIComponent(body.op_id)}/confirm`,
          headers: auth,
          payload: { step: 'retire', note: 'TALOS_KEK_v1 removed from every gateway' },
        });
        expect(confirmed.statusCode).toBe(200);
        const status = await statusUntil(api, body.status_url, (s) => s.status !== 'running');
        const kekStatus = (
          await api.inject({ method: 'GET', url: '/admin/v1/secrets/kek-status', headers: auth })
        ).json<Record<string, unknown>>();
        return { status, kekStatus };
      });

      expect(gateway.errors).toEqual([]);
      expect(final.status).toMatchObject({
        status: 'completed',
        target_kek_id: 'v2',
        stats: { scanned: 250, rotated: 230, failed: 0 },
        last_error: null,
        target: 'talos',
        counters: { rewrapped: 230, alreadyOnTarget: 20, skipped: 0, failed: 0, casConflicts: 0 },
      });
      const keyspace = await keyspaceIn(db.pool, 'talos');
      expect(final.kekStatus).toEqual({
        target: 'talos',
        keyspace: { id: keyspace.id, database_id: keyspace.databaseId, table: 'public.secrets' },
        workflow_id: rotationWorkflowId('talos', keyspace),
        current_kek_id: 'v2',
        loaded_kek_ids: ['v0', 'v1', 'v2'],
        stale_counts: { v1: 0, v2: 250 },
        dek_counts: { v2: 250 },
        rows_without_value: 0,
        keks: [
          expect.objectContaining({ kek_id: 'v1', state: 'retired', restorable_until: expect.any(String) as unknown }),
          expect.objectContaining({ kek_id: 'v2', state: 'active', restorable_until: null }),
        ],
      });
      // With v2 alone, by the fixture's own AES-GCM.
      expect(await checkSecrets(db.pool, keks.v2, 'v2', [...all, ...gateway.created])).toEqual([]);
      // Rewritten as Talos's own job does: the v1 binding in aad, version + 1, rotated_at; updated_at untouched.
      const after = await db.pool.query<{
        id: string;
        aad: string;
        version: number;
        rotated_at: Date | null;
        updated_at: Date;
      }>('SELECT id, aad, version, rotated_at, updated_at FROM public.secrets WHERE id = ANY($1::text[])', [
        [...v1Bound, ...nameBound].map((s) => s.id),
      ]);
      const was = new Map(before.rows.map((r) => [r.id, r]));
      for (const row of after.rows) {
        expect(row.aad).toBe(v1Binding(row.id).toString('base64url'));
        expect(row.version).toBe(was.get(row.id)!.version + 1);
        expect(row.rotated_at).not.toBeNull();
        expect(row.updated_at).toEqual(was.get(row.id)!.updated_at);
      }
      expect(await publicShape(db.pool)).toEqual(shape);
      expect(await new KekRegistry(db.pool, 'talos').get('v1')).toMatchObject({ state: 'retired' });
    } finally {
      await db.drop();
    }
  });

  it('a gateway updating the very secrets being rotated loses nothing; a third KEK is skipped and rotate-all without a body says which KEK to name', async () => {
    const { db } = await createApplicationDatabase(createTalosSchema, publicShape);
    try {
      const onV1 = await seedSecrets(db.pool, keks.v1, 'v1', 150, 'v1');
      const onV0 = await seedSecrets(db.pool, keks.v0, 'v0', 10, 'name');
      // This time the gateway creates secrets and updates those still on v1 (under v2), racing rekey's compare-and-swap.
      const gateway = new TalosGateway(db.pool, keks, 'v2', [...onV1, ...onV0], onV1);
      gateway.start({ create: true });

      const final = await withApi(db, async (api) => {
        // Refused at once by the validate step (400: bad input), not accepted and failed a moment later.
        const ambiguous = await api.inject({ method: 'POST', url: '/admin/v1/secrets/rotate-all', headers: auth });
        expect(ambiguous.statusCode).toBe(400);
        expect(ambiguous.json()).toMatchObject({
          error: 'bad_request',
          message: expect.stringMatching(
            /^target 'talos' has rows on 'v0' \(10\), 'v1' \(\d+\): name the KEK to rotate from$/,
          ) as unknown,
        });

        const started = await api.inject({
          method: 'POST',
          url: '/admin/v1/secrets/rotate-all',
          headers: auth,
          payload: { from: 'v1', grace_period: '1s', batch_size: 10 },
        });
        const { op_id: opId, status_url: statusUrl } = started.json<{ op_id: string; status_url: string }>();
        await statusUntil(api, statusUrl, (s) => s.phase === 'grace' || s.status !== 'running');
        await gateway.stop();
        await statusUntil(api, statusUrl, (s) => (s.waiting as { step?: string })?.step === 'retire');
        await api.inject({
          method: 'POST',
          url: `/admin/v1/secrets/rotation/${encodeURIComponent(opId)}/confirm`,
          headers: auth,
          payload: { step: 'retire', note: 'done' },
        });
        return statusUntil(api, statusUrl, (s) => s.status !== 'running');
      });

      expect(gateway.errors).toEqual([]);
      expect(gateway.writes).toBeGreaterThan(0);
      expect(final).toMatchObject({ status: 'completed', counters: { skipped: 10, failed: 0 } });
      expect(await checkSecrets(db.pool, keks.v2, 'v2', [...onV1, ...gateway.created])).toEqual([]);
      expect(await checkSecrets(db.pool, keks.v0, 'v0', onV0)).toEqual([]);
    } finally {
      await db.drop();
    }
  });
});
