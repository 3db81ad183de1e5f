// `--to new` is a request, not a KEK: once provision has chosen the new KEK's id, every surface names that id (the CLI's
// status, the `progress` query, the Web UI, the admin API), and the start answer, given before provision, says that
// a new KEK is coming instead of printing 'new' as if it were one. Against the dev server and PostgreSQL.
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppInstances } from '../../src/store/app-instances';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import type { RotationReport } from '../../src/workflows';
import type { CliResult } from '../helpers/cli';
import { rotationIdIn } from '../helpers/keyspace';
import { startKeyringWorker, type KeyringWorker } from '../helpers/keyring-worker';
import { createDevServerEnv, progressUntil, resultWithin, type OwnServerEnvironment } from '../helpers/temporal';

const TOKEN = 'test-token-new-kek-0123456789';

describe("a rotation to 'new' names the KEK it provisioned on every surface", () => {
  let env: OwnServerEnvironment;
  let fixture: KeyringWorker;
  let api: FastifyInstance;
  const rekey = (...args: string[]): Promise<CliResult> => fixture.rekey(...args);

  beforeAll(async () => {
    env = await createDevServerEnv();
    // v1 alone in the keyring: 'new' generates the next KEK.
    fixture = await startKeyringWorker(env, { taskQueue: 'rekey-new-kek-test', kekIds: ['v1'], tenants: 50 });
    api = await fixture.adminApi(TOKEN);
  });

  afterAll(async () => {
    await fixture?.stop();
    await env?.teardown();
  });

  it("rotate --to new: the start answer says a new KEK is coming (it printed 'new' as the KEK), and from the provision on the CLI's status, the progress query, the Web UI and the admin API name its id", async () => {
    // An instance that holds only v1 keeps the run at the fleet gate after provision, however fast this machine is.
    const instances = new AppInstances(fixture.db.pool, BUILTIN_TARGET);
    await instances.announce({ instanceId: 'old-gw', unwrapKekIds: ['v1'], wrapKekId: 'v1', kekFingerprints: {} });
    const auth = { authorization: `Bearer ${TOKEN}` };
    try {
      const start = await rekey('rotate', '--from', 'v1', '--to', 'new');
      expect(start, start.stderr).toMatchObject({ code: 0 });
      expect(start.stdout).toContain("of target 'rekey' ('v1' → a new KEK (id chosen at provision))");
      expect(start.stdout).not.toContain("'new'");
      const opId = /started rotation (\S+)/.exec(start.stdout)![1]!;
      const handle = env.client.workflow.getHandle(await rotationIdIn(fixture.db.pool));
      const provisioned = await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      expect(provisioned.to).toBe('v2');

      const status = await rekey('status', opId);
      expect(status.stdout).toContain("must hold 'v2'");
      expect(status.stdout).not.toContain("'new'");
      const json = JSON.parse((await rekey('--json', 'status', opId)).stdout) as { progress: { to: string } };
      expect(json.progress.to).toBe('v2');

      const description = await handle.describe();
      expect(await description.staticSummary()).toBe('rotate rekey: v1 → a new KEK (id chosen at provision)');
      const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
      expect(metadata.currentDetails).toContain('**KEK:** `v1` → `v2`');

      const viaApi = await api.inject({
        method: 'GET',
        url: `/admin/v1/secrets/rotation-status/${encodeURIComponent(opId)}`,
        headers: auth,
      });
      expect(viaApi.json()).toMatchObject({ target_kek_id: 'v2', to: 'v2', from: 'v1' });

      expect((await rekey('abort', opId, '--reason', 'test over')).code).toBe(0);
      await resultWithin<RotationReport>(handle);

      // The admin API's start answer says the same; its status names the id once provisioned.
      await instances.announce({ instanceId: 'old-gw', unwrapKekIds: ['v1'], wrapKekId: 'v1', kekFingerprints: {} });
      const started = await api.inject({
        method: 'POST',
        url: '/admin/v1/secrets/rotate-all',
        headers: auth,
        payload: { from: 'current', to: 'new', grace_period: '1h' },
      });
      expect(started.statusCode).toBe(202);
      const answer = started.json<{ op_id: string; message: string }>();
      expect(answer.message).toContain("('v1' → a new KEK (id chosen at provision))");
      const again = await progressUntil(handle, (p) => p.outcome === 'running' && p.waiting?.kind === 'fleet');
      expect(again.to).toMatch(/^v\d+$/);
      const second = await api.inject({
        method: 'GET',
        url: `/admin/v1/secrets/rotation-status/${encodeURIComponent(answer.op_id)}`,
        headers: auth,
      });
      expect(second.json()).toMatchObject({ target_kek_id: again.to, to: again.to });
      expect((await rekey('abort', answer.op_id, '--reason', 'test over')).code).toBe(0);
    } finally {
      await instances.withdraw('old-gw');
    }
  });
});
