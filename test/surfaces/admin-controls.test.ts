// Issue 25: the admin API has what the CLI has. rotate-all takes every field `rekey rotate` takes; the grace and the
// fleet override, which only the CLI had, are routes; the OpenAPI document comes from the same schemas.
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_ONLY_OPTIONS, ROTATION_FIELDS } from '../../src/admin/rotation-body';
import { rotateCommand } from '../../src/cli/commands/rotate';
import { seedTenants } from '../../src/dev/tenants';
import { AppInstances } from '../../src/store/app-instances';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import type { RotationReport } from '../../src/workflows';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { rotationIdIn } from '../helpers/keyspace';
import { createDevServerEnv, progressUntil, resultWithin } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

const TOKEN = 'controls-token-0123456789';
const taskQueue = 'rekey-admin-controls';

describe('the admin API has what the CLI has, against the dev server and PostgreSQL', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let api: FastifyInstance;
  let served: ServedWorker;
  /** The workflow id rekey's own rotations run under in this database (its keyspace's). */
  let rotationId: string;
  const { provider: keys } = createTestKeys(['v1', 'v2', 'v3'], 'v1');

  const post = (url: string, payload?: object) =>
    api.inject({ method: 'POST', url, headers: { authorization: `Bearer ${TOKEN}` }, ...(payload && { payload }) });

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 500 });
    served = await serveWorker(env, { taskQueue, db: db.pool, keys });
    rotationId = await rotationIdIn(db.pool);
    api = await served.adminApi(TOKEN, {
      webUiUrl: (workflowId) => `https://temporal.example.com/namespaces/default/workflows/${workflowId}`,
    });
  });

  afterAll(async () => {
    await served?.stop();
    await db?.drop();
    await env?.teardown();
  });

  it('Finding: rotate-all takes every field rekey rotate takes, one to one (restore_window, confirm_timeout, allow_legacy_values, from_version, …), and the OpenAPI document lists them from the same schema', async () => {
    const cli = rotateCommand()
      .options.map((option) => option.long!)
      .filter((option) => !CLI_ONLY_OPTIONS.includes(option));
    expect(cli.sort()).toEqual(ROTATION_FIELDS.map((field) => field.cli).sort());
    const document = (await api.inject({ method: 'GET', url: '/admin/v1/openapi.json' })).json<{
      paths: Record<
        string,
        { post?: { requestBody?: { content: Record<string, { schema: { properties: object } }> } } }
      >;
    }>();
    const body = document.paths['/admin/v1/secrets/rotate-all']!.post!.requestBody!.content['application/json']!;
    expect(Object.keys(body.schema.properties).sort()).toEqual(ROTATION_FIELDS.map((field) => field.api).sort());
    for (const path of [
      '/admin/v1/secrets/rotation/{op_id}/grace',
      '/admin/v1/secrets/rotation/{op_id}/override-fleet',
    ]) {
      expect(document.paths[path]?.post).toBeDefined();
    }
    const both = await post('/admin/v1/secrets/rotate-all', { from: 'v1', from_version: 1, to: 'v2' });
    expect(both.statusCode).toBe(400);
    expect(both.json()).toEqual({ error: 'bad_request', message: 'give from or from_version, not both' });
  });

  it('Finding: POST …/override-fleet lets the fleet gate that waits go, as rekey override-fleet does; it needs a reason, and a run that has ended answers 409', async () => {
    // An old gateway instance that holds v1 alone: promotion waits for it.
    const instances = new AppInstances(db.pool, BUILTIN_TARGET);
    await instances.announce({
      instanceId: 'gw-old',
      unwrapKekIds: ['v1'],
      wrapKekId: 'v1',
      kekFingerprints: { v1: await fingerprintIn(keys, 'v1') },
    });
    const started = await post('/admin/v1/secrets/rotate-all', { from: 'v1', to: 'v2', grace_period: '1s' });
    expect(started.statusCode).toBe(202);
    const { op_id: opId, web_ui_url: webUi } = started.json<{ op_id: string; web_ui_url: string }>();
    expect(webUi).toBe(`https://temporal.example.com/namespaces/default/workflows/${rotationId}`);
    const handle = env.client.workflow.getHandle(rotationId);
    await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');

    const unexplained = await post(`/admin/v1/secrets/rotation/${opId}/override-fleet`, {});
    expect(unexplained.statusCode).toBe(400);
    const overridden = await post(`/admin/v1/secrets/rotation/${opId}/override-fleet`, { reason: 'gw-old is drained' });
    expect(overridden.statusCode).toBe(200);
    expect(overridden.json()).toMatchObject({
      op_id: opId,
      note: expect.stringContaining('gw-old is drained') as unknown,
    });
    // The next gate (the last pass waits until every instance wraps with v2) waits again; it goes once gw-old is gone.
    await instances.withdraw('gw-old');
    expect(await resultWithin<RotationReport>(handle)).toMatchObject({ outcome: 'completed', from: 'v1', to: 'v2' });

    const ended = await post(`/admin/v1/secrets/rotation/${opId}/override-fleet`, { reason: 'too late' });
    expect(ended.statusCode).toBe(409);
  });

  it("Finding: POST …/grace extends and ends a rotation's grace period, as rekey grace does; and rotate-all's restore_window, confirm_timeout and allow_legacy_values reach the run", async () => {
    const started = await post('/admin/v1/secrets/rotate-all', {
      from: 'v2',
      to: 'v3',
      grace_period: '1d',
      restore_window: '2d',
      confirm_timeout: '1h',
      allow_legacy_values: 'no legacy values in this keyspace',
    });
    expect(started.statusCode).toBe(202);
    const { op_id: opId } = started.json<{ op_id: string }>();
    const handle = env.client.workflow.getHandle(rotationId);
    const history = await handle.fetchHistory();
    const input = history.events![0]!.workflowExecutionStartedEventAttributes!.input!.payloads![0]!.data!;
    expect(JSON.parse(Buffer.from(input).toString('utf8'))).toMatchObject({
      from: 'v2',
      to: 'v3',
      gracePeriod: '1d',
      restoreWindow: '2d',
      confirmTimeout: '1h',
      allowLegacyValues: 'no legacy values in this keyspace',
    });
    await progressUntil(handle, (p) => p.phase === 'grace' && p.graceEndsAt !== undefined);

    const nothingWaits = await post(`/admin/v1/secrets/rotation/${opId}/override-fleet`, { reason: 'in grace' });
    expect(nothingWaits.statusCode).toBe(409);
    const neither = await post(`/admin/v1/secrets/rotation/${opId}/grace`, {});
    expect(neither.statusCode).toBe(400);
    expect(neither.json()).toEqual({
      error: 'bad_request',
      message: 'give exactly one of extend_by (e.g. "2d") or end_now: true',
    });
    const extended = await post(`/admin/v1/secrets/rotation/${opId}/grace`, { extend_by: '2d' });
    expect(extended.statusCode).toBe(200);
    const endsAt = Date.parse(extended.json<{ grace_ends_at: string }>().grace_ends_at);
    expect(endsAt).toBeGreaterThan(Date.now() + 2.9 * 86_400_000);
    expect(endsAt).toBeLessThan(Date.now() + 3.1 * 86_400_000);
    const ended = await post(`/admin/v1/secrets/rotation/${opId}/grace`, { end_now: true });
    expect(ended.statusCode).toBe(200);
    expect(await resultWithin<RotationReport>(handle)).toMatchObject({ outcome: 'completed', from: 'v2', to: 'v3' });

    const retired = await new KekRegistry(db.pool, BUILTIN_TARGET).get('v2');
    expect(retired!.restorableUntil!.getTime() - retired!.retiredAt!.getTime()).toBe(2 * 86_400_000);
    const unknown = await post('/admin/v1/secrets/rotation/nope/grace', { end_now: true });
    expect(unknown.statusCode).toBe(404);
  });
});
