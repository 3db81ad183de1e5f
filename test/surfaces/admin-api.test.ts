import { BUILTIN_TARGET } from '../../src/targets/builtin';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { seedTenants } from '../../src/dev/tenants';
import { KekRegistry } from '../../src/store/kek-registry';
import { createWorker } from '../../src/worker';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';

const TOKEN = 'test-token-0123456789abcdef';
const auth = { authorization: `Bearer ${TOKEN}` };

describe('admin HTTP API (the runbook drop-in), against the dev server and PostgreSQL', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let api: FastifyInstance;
  let worker: Worker;
  let running: Promise<void>;
  const { provider: keys } = createTestKeys(['v1', 'v2'], 'v2');

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', keys.fingerprint('v1'));
    await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 4_000 });
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue: 'rekey-admin-test',
      db: db.pool,
      keys,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
    // As after the runbook's step 2: the configuration already names v2 as current.
    api = await buildAdminServer({
      client: env.client,
      db: db.pool,
      taskQueue: 'rekey-admin-test',
      token: TOKEN,
      configuredCurrentKekId: 'v2',
    });
  });

  afterAll(async () => {
    await api?.close();
    worker?.shutdown();
    await running;
    await db?.drop();
    await env?.teardown();
  });

  it('refuses requests without a valid bearer token with 401', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: TOKEN }]) {
      const response = await api.inject({ method: 'GET', url: '/admin/v1/secrets/kek-status', headers });
      expect(response.statusCode).toBe(401);
      expect(response.headers['www-authenticate']).toBe('Bearer');
      expect(response.json()).toEqual({ error: 'unauthorized', message: 'a valid bearer token is required' });
    }
  });

  it('answers bad JSON and bodies that break the schema with 400 and the reason', async () => {
    const badJson = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: { ...auth, 'content-type': 'application/json' },
      payload: '{"batch_size": ',
    });
    expect(badJson.statusCode).toBe(400);
    expect(badJson.json<{ error: string; message: string }>()).toMatchObject({
      error: 'bad_request',
      message: expect.stringMatching(/JSON/) as unknown,
    });

    const outOfRange = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: auth,
      payload: { batch_size: 0 },
    });
    expect(outOfRange.statusCode).toBe(400);
    expect(outOfRange.json()).toEqual({ error: 'bad_request', message: 'body/batch_size must be >= 1' });

    const unknownField = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: auth,
      payload: { kek: 'v9' },
    });
    expect(unknownField.statusCode).toBe(400);
    expect(unknownField.json<{ message: string }>().message).toBe('body must NOT have additional properties');

    const badGrace = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: auth,
      payload: { grace_period: 'soon' },
    });
    expect(badGrace.json()).toEqual({
      error: 'bad_request',
      message: "gracePeriod 'soon' is not a duration like 7d, 36h, 90m or 30s",
    });
  });

  it('answers 404 for an unknown op', async () => {
    const response = await api.inject({ method: 'GET', url: '/admin/v1/secrets/rotation-status/nope', headers: auth });
    expect(response.statusCode).toBe(404);
    expect(response.json()).toEqual({ error: 'not_found', message: "no rotation 'nope'" });
    const pause = await api.inject({ method: 'POST', url: '/admin/v1/secrets/rotation/nope/pause', headers: auth });
    expect(pause.statusCode).toBe(404);

    // Another workflow in the same namespace is not a rotation, and the admin API does not touch it.
    await env.client.workflow.start('someOtherWorkflow', { taskQueue: 'elsewhere', workflowId: 'not-a-rotation' });
    const other = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotation/not-a-rotation/abort',
      headers: auth,
    });
    expect(other.statusCode).toBe(404);
    expect(other.json()).toEqual({ error: 'not_found', message: "'not-a-rotation' is not a rotation" });
  });

  it('rotate-all answers 202 with op_id and status_url, 409 while it runs; pause, resume, status; then kek-status shows no stale DEK', async () => {
    const started = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: auth,
      payload: { batch_size: 10, parallelism: 1, grace_period: '1s' },
    });
    expect(started.statusCode).toBe(202);
    const { op_id: opId, status_url: statusUrl } = started.json<{ op_id: string; status_url: string }>();
    expect(opId).toBe('kek-rotation-v1-to-v2');
    expect(statusUrl).toBe('/admin/v1/secrets/rotation-status/kek-rotation-v1-to-v2');

    const again = await api.inject({ method: 'POST', url: '/admin/v1/secrets/rotate-all', headers: auth });
    expect(again.statusCode).toBe(409);
    expect(again.json()).toMatchObject({ error: 'conflict', op_id: opId });

    const paused = await api.inject({ method: 'POST', url: `/admin/v1/secrets/rotation/${opId}/pause`, headers: auth });
    expect(paused.statusCode).toBe(200);
    expect(paused.json()).toMatchObject({ op_id: opId, paused: true });
    const resumed = await api.inject({
      method: 'POST',
      url: `/admin/v1/secrets/rotation/${opId}/resume`,
      headers: auth,
    });
    expect(resumed.json()).toMatchObject({ paused: false });

    let status: { status: string; outcome?: string; counters?: { rewrapped: number } } = { status: 'RUNNING' };
    for (let i = 0; i < 300 && status.status === 'RUNNING'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = (await api.inject({ method: 'GET', url: statusUrl, headers: auth })).json();
    }
    expect(status).toMatchObject({ status: 'COMPLETED', outcome: 'completed', counters: { rewrapped: 4_000 } });

    const kekStatus = await api.inject({ method: 'GET', url: '/admin/v1/secrets/kek-status', headers: auth });
    expect(kekStatus.json()).toEqual({ current_kek_id: 'v2', stale_counts: {}, dek_counts: { v2: 4_000 } });

    const afterwards = await api.inject({
      method: 'POST',
      url: `/admin/v1/secrets/rotation/${opId}/abort`,
      headers: auth,
    });
    expect(afterwards.statusCode).toBe(409);
  });

  it('serves an OpenAPI document that lists every route it has', async () => {
    const response = await api.inject({ method: 'GET', url: '/admin/v1/openapi.json' });
    const document = response.json<{ openapi: string; paths: Record<string, object> }>();
    expect(document.openapi).toMatch(/^3\./);
    expect(Object.keys(document.paths).sort()).toEqual([
      '/admin/v1/secrets/kek-status',
      '/admin/v1/secrets/rotate-all',
      '/admin/v1/secrets/rotation-status/{op_id}',
      '/admin/v1/secrets/rotation/{op_id}/abort',
      '/admin/v1/secrets/rotation/{op_id}/pause',
      '/admin/v1/secrets/rotation/{op_id}/resume',
    ]);
    const routes = api.printRoutes({ commonPrefix: false });
    for (const path of ['rotate-all', 'kek-status', 'rotation-status/', ':op_id']) expect(routes).toContain(path);
  });
});
