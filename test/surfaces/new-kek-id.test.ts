// `--to new` is a request, not a KEK: once provision has chosen the new KEK's id, every surface names that id (the CLI's
// status, the `progress` query, the Web UI, the admin API), and the start answer, given before provision, says that
// a new KEK is coming instead of printing 'new' as if it were one. Against the dev server and PostgreSQL.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Worker } from '@temporalio/worker';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { seedTenants } from '../../src/dev/tenants';
import { FileKeyring } from '../../src/keys/file-keyring';
import { AppInstances } from '../../src/store/app-instances';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import type { RotationReport } from '../../src/workflows';
import { runRekey, type CliResult } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { rotationIdIn } from '../helpers/keyspace';
import {
  createDevServerEnv,
  progressUntil,
  resultWithin,
  workflowBundle,
  type OwnServerEnvironment,
} from '../helpers/temporal';

const TOKEN = 'test-token-new-kek-0123456789';

describe("a rotation to 'new' names the KEK it provisioned on every surface", () => {
  let env: OwnServerEnvironment;
  let db: TestDatabase;
  let keyring: FileKeyring;
  let keyringFile: string;
  let worker: Worker;
  let running: Promise<void>;
  let api: FastifyInstance;
  const taskQueue = 'rekey-new-kek-test';
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-new-kek-'));

  function rekey(...args: string[]): Promise<CliResult> {
    return runRekey(['--address', env.address, '--task-queue', taskQueue, ...args], {
      PATH: process.env.PATH,
      DATABASE_URL: db.url,
      REKEY_KEYRING_FILE: keyringFile,
    });
  }

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    keyringFile = path.join(scratch, 'keyring.json');
    keyring = FileKeyring.open(keyringFile, { create: true });
    await keyring.generate('v1');
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', keyring.fingerprint('v1'));
    await seedTenants({ db: db.pool, keys: keyring, kekId: 'v1', count: 50 });
    const targets = new TargetRuntimes({ db: db.pool, keys: keyring });
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue,
      db: db.pool,
      keys: keyring,
      targets,
      temporal: env.client,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
    api = await buildAdminServer({
      client: env.client,
      targets: new TargetRuntimes({ db: db.pool, keys: keyring }),
      defaultTarget: BUILTIN_TARGET,
      taskQueue,
      token: TOKEN,
      configuredCurrentKekId: () => undefined,
    });
  });

  afterAll(async () => {
    await api?.close();
    worker?.shutdown();
    await running;
    keyring?.close();
    await db?.drop();
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it("rotate --to new: the start answer says a new KEK is coming (it printed 'new' as the KEK), and from the provision on the CLI's status, the progress query, the Web UI and the admin API name its id", async () => {
    // An instance that holds only v1 keeps the run at the fleet gate after provision, however fast this machine is.
    const instances = new AppInstances(db.pool, BUILTIN_TARGET);
    await instances.announce({ instanceId: 'old-gw', unwrapKekIds: ['v1'], wrapKekId: 'v1', kekFingerprints: {} });
    const auth = { authorization: `Bearer ${TOKEN}` };
    try {
      const start = await rekey('rotate', '--from', 'v1', '--to', 'new');
      expect(start, start.stderr).toMatchObject({ code: 0 });
      expect(start.stdout).toContain("of target 'rekey' ('v1' → a new KEK (id chosen at provision))");
      expect(start.stdout).not.toContain("'new'");
      const opId = /started rotation (\S+)/.exec(start.stdout)![1]!;
      const handle = env.client.workflow.getHandle(await rotationIdIn(db.pool));
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
