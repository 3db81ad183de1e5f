import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedTenants } from '../../src/dev/tenants';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { runRekey } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { createTestKeys } from '../helpers/keys';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { createDevServerEnv } from '../helpers/temporal';
import { rotationWorkflowId } from '../../src/rotation/identity';
import { keyspaceIn } from '../helpers/keyspace';
import { RESTORES_AND_DESTRUCTIONS } from '../helpers/keyring';
import { fingerprintIn } from '../helpers/store-keys';

const TOKEN = 'test-token-0123456789abcdef';
const auth = { authorization: `Bearer ${TOKEN}` };

describe('admin HTTP API (the runbook drop-in), against the dev server and PostgreSQL', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let api: FastifyInstance;
  let served: ServedWorker;
  const { provider: keys } = createTestKeys(['v1', 'v2'], 'v2');

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 4_000 });
    served = await serveWorker(env, { taskQueue: 'rekey-admin-test', db: db.pool, keys });
    // As after the runbook's step 2: the configuration already names v2 as current.
    api = await served.adminApi(TOKEN, { configuredCurrentKekId: () => 'v2' });
  });

  afterAll(async () => {
    await served?.stop();
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
    await env.client.workflow.start('someOtherWorkflow', {
      taskQueue: 'elsewhere',
      workflowId: 'kek-rotation-impostor',
    });
    const other = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotation/kek-rotation-impostor/abort',
      headers: auth,
    });
    expect(other.statusCode).toBe(404);
    expect(other.json()).toEqual({ error: 'not_found', message: "'kek-rotation-impostor' is not a rotation" });
  });

  it("Finding 4 (two rotations of one keyspace): the same rotate-all again while one runs answers 409 with the running op_id; pause, resume and status in Talos's fields; then kek-status counts as Talos does", async () => {
    const started = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: auth,
      payload: { batch_size: 10, parallelism: 1, grace_period: '1s' },
    });
    expect(started.statusCode).toBe(202);
    const body = started.json<{ op_id: string; status: string; status_url: string; target: string }>();
    const opId = body.op_id;
    const keyspace = await keyspaceIn(db.pool);
    expect(opId).toMatch(new RegExp(`^${rotationWorkflowId('rekey', keyspace)}@[0-9a-f-]{36}$`));
    expect(body).toMatchObject({ status: 'running', target: 'rekey' });
    expect(body.status_url).toBe(`/admin/v1/secrets/rotation-status/${encodeURIComponent(opId)}`);

    // The runbook's rotate-all, run again a few seconds later: today's code answered 202 and started a second one.
    const again = await api.inject({ method: 'POST', url: '/admin/v1/secrets/rotate-all', headers: auth });
    expect(again.statusCode).toBe(409);
    expect(again.json()).toMatchObject({ error: 'ROTATION_ALREADY_RUNNING', op_id: opId });
    const explicit = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: auth,
      payload: { from: 'v1', to: 'v2' },
    });
    expect(explicit.statusCode).toBe(409);

    const paused = await api.inject({ method: 'POST', url: `/admin/v1/secrets/rotation/${opId}/pause`, headers: auth });
    expect(paused.statusCode).toBe(200);
    expect(paused.json()).toMatchObject({ op_id: opId, paused: true });
    const resumed = await api.inject({
      method: 'POST',
      url: `/admin/v1/secrets/rotation/${opId}/resume`,
      headers: auth,
    });
    expect(resumed.json()).toMatchObject({ paused: false });

    let status: Record<string, unknown> = { status: 'running' };
    await eventually(
      'the rotation no longer running',
      async () => {
        status = (await api.inject({ method: 'GET', url: body.status_url, headers: auth })).json();
        return status.status !== 'running';
      },
      { every: 100, describe: () => `last status: ${JSON.stringify(status)}` },
    );
    expect(status).toMatchObject({
      id: opId,
      status: 'completed',
      target_kek_id: 'v2',
      stats: { scanned: 4_000, rotated: 4_000, failed: 0 },
      last_error: null,
      execution_status: 'COMPLETED',
      outcome: 'completed',
      target: 'rekey',
      counters: { rewrapped: 4_000 },
    });
    expect(Date.parse(status.completed_at as string)).toBeGreaterThanOrEqual(Date.parse(status.started_at as string));

    const kekStatus = await api.inject({ method: 'GET', url: '/admin/v1/secrets/kek-status', headers: auth });
    expect(kekStatus.json()).toEqual({
      target: 'rekey',
      keyspace: { id: keyspace.id, database_id: keyspace.databaseId, table: 'rekey.tenant_deks' },
      workflow_id: rotationWorkflowId('rekey', keyspace),
      current_kek_id: 'v2',
      loaded_kek_ids: ['v1', 'v2'],
      stale_counts: { v1: 0, v2: 4_000 },
      dek_counts: { v2: 4_000 },
      rows_without_value: 0,
      keks: [
        expect.objectContaining({ kek_id: 'v1', state: 'retired', restorable_until: expect.any(String) as unknown }),
        expect.objectContaining({ kek_id: 'v2', state: 'active', restorable_until: null }),
      ],
    });

    const afterwards = await api.inject({
      method: 'POST',
      url: `/admin/v1/secrets/rotation/${opId}/abort`,
      headers: auth,
    });
    expect(afterwards.statusCode).toBe(409);
  });

  it('Finding: Talos\'s runbook step 5 reads "once stale_counts["v1"] is 0, remove TALOS_KEK_v1"; kek-status left v1 out once no row used it: the admin API\'s and rekey kek-status --json\'s stale_counts give every KEK the registry records, v1 at 0', async () => {
    // The rotation above moved every row to v2 and retired v1.
    const http = await api.inject({ method: 'GET', url: '/admin/v1/secrets/kek-status', headers: auth });
    const answer = http.json<{ stale_counts: Record<string, number> }>();
    expect(answer.stale_counts['v1']).toBe(0);
    const cli = await runRekey(['--json', 'kek-status'], { PATH: process.env.PATH, DATABASE_URL: db.url });
    expect(cli, cli.stderr).toMatchObject({ code: 0 });
    expect(JSON.parse(cli.stdout)).toMatchObject({ stale_counts: answer.stale_counts });
  });

  it('Finding: the runbook\'s rotate-all run again once every row is on the KEK the configuration names current answers 200 "nothing left to rotate", and rekey rotate --from current --to it exits 0 in the same words, where rotate-all was refused (400) for a key source that cannot generate one', async () => {
    // The rotation above moved every row to v2 (the configuration's current KEK) and retired v1.
    const words = "'v2' is already the active KEK and no older KEK still wraps a row: nothing left to rotate";
    const again = await api.inject({ method: 'POST', url: '/admin/v1/secrets/rotate-all', headers: auth });
    expect(again.statusCode, again.body).toBe(200);
    expect(again.json()).toMatchObject({ status: 'completed', target: 'rekey', from: 'v2', to: 'v2' });
    expect(again.json<{ message: string }>().message).toBe(`nothing to do: ${words}`);

    const cliEnv = { PATH: process.env.PATH, DATABASE_URL: db.url };
    const cli = await runRekey(
      ['--address', env.address, '--task-queue', 'rekey-admin-test', 'rotate', '--from', 'current', '--to', 'v2'],
      cliEnv,
    );
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout).toContain(`: Nothing to do: ${words}\n`);
    const json = await runRekey(
      [
        '--address',
        env.address,
        '--task-queue',
        'rekey-admin-test',
        '--json',
        'rotate',
        '--from',
        'current',
        '--to',
        'v2',
      ],
      cliEnv,
    );
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({
      validated: { outcome: 'nothing-to-do', note: `nothing to do: ${words}` },
    });
  });

  it('restores the KEK the rotation above retired, with who and why recorded; refuses a restore without them, and answers 404 for a KEK the registry does not know', async () => {
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    // The rotation of the test above ended by retiring v1 (the default restore window: 30 days).
    expect(await registry.get('v1')).toMatchObject({ state: 'retired' });
    const restore = (kekId: string, payload: object) =>
      api.inject({ method: 'POST', url: `/admin/v1/secrets/keks/${kekId}/restore`, headers: auth, payload });

    const unexplained = await restore('v1', { actor: 'alice' });
    expect(unexplained.statusCode).toBe(400);
    expect(unexplained.json<{ message: string }>().message).toMatch(/reason/);
    const anonymous = await restore('v1', { reason: 'gateway-3 still reads v1' });
    expect(anonymous.statusCode).toBe(400);
    expect(anonymous.json<{ message: string }>().message).toMatch(/actor/);
    expect(await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).toEqual([]);

    const restored = await restore('v1', { reason: 'gateway-3 still reads v1', actor: 'alice' });
    expect(restored.statusCode).toBe(200);
    expect(restored.json()).toEqual({
      target: 'rekey',
      kek_id: 'v1',
      state: 'decrypt_only',
      fingerprint: await fingerprintIn(keys, 'v1'),
      actor: 'alice',
      // The environment is read-only to rekey: the answer says what the operator sets again.
      operator_must:
        'set TEST_KEK_v1 again in every worker, admin API and application process, to the key the registry recorded',
    });
    expect(await registry.get('v1')).toMatchObject({ state: 'decrypt_only', retiredAt: null });
    expect(await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).toMatchObject([
      { event: 'restored', reason: 'gateway-3 still reads v1', actor: 'alice' },
    ]);

    // No such KEK: 404, as the README's table of exit codes and statuses says (it answered 422 before).
    const unknown = await restore('v9', { reason: 'typo', actor: 'alice' });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json()).toEqual({
      error: 'not_found',
      message: "KEK 'v9' is not known to the registry of target 'rekey'",
    });
  });

  it('serves an OpenAPI document that lists every route it has', async () => {
    const response = await api.inject({ method: 'GET', url: '/admin/v1/openapi.json' });
    const document = response.json<{ openapi: string; paths: Record<string, object> }>();
    expect(document.openapi).toMatch(/^3\./);
    expect(Object.keys(document.paths).sort()).toEqual([
      '/admin/v1/migrations/migrate-dek',
      '/admin/v1/migrations/{op_id}',
      '/admin/v1/migrations/{op_id}/abort',
      '/admin/v1/migrations/{op_id}/pause',
      '/admin/v1/migrations/{op_id}/resume',
      '/admin/v1/secrets/kek-status',
      '/admin/v1/secrets/keks/{kek_id}/restore',
      '/admin/v1/secrets/rotate-all',
      '/admin/v1/secrets/rotation-status/{op_id}',
      '/admin/v1/secrets/rotation/{op_id}/abort',
      '/admin/v1/secrets/rotation/{op_id}/confirm',
      '/admin/v1/secrets/rotation/{op_id}/grace',
      '/admin/v1/secrets/rotation/{op_id}/override-fleet',
      '/admin/v1/secrets/rotation/{op_id}/pause',
      '/admin/v1/secrets/rotation/{op_id}/resume',
      '/admin/v1/secrets/rotations',
    ]);
    const routes = api.printRoutes({ commonPrefix: false });
    for (const path of ['rotate-all', 'kek-status', 'rotation-status/', ':op_id']) expect(routes).toContain(path);
  });
});
