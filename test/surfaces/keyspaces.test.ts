// Issue 24, findings 8 and 9: what identifies a keyspace (its table in its database), and the ids of the workflows run
// on one. Two databases with a target `rekey` share one Temporal namespace here, each with a worker of its own.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, TypedSearchAttributes } from '@temporalio/common';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import type { History } from '../../src/client/history';
import { startRotation } from '../../src/client/rotations';
import { seedTenants } from '../../src/dev/tenants';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { destroyWorkflowIdOf, rotationWorkflowId, shortDatabaseId } from '../../src/rotation/identity';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { parseTargetsConfig } from '../../src/targets/config';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import { destroyRetiredKek, rotateKek, type RotationReport } from '../../src/workflows';
import { RekeyTarget } from '../../src/workflows/search-attributes';
import { RunFailedError, TargetConfigError } from '../../src/errors';
import { runRekeyAt, type CliResult } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyspaceIn } from '../helpers/keyspace';
import { eventually } from '../helpers/eventually';
import { createDevServerEnv, progressUntil, resultWithin, workflowBundle } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** One deployment: its own database, keyring file and task queue, and a worker of its own on them. */
interface Deployment {
  name: string;
  db: TestDatabase;
  keyringFile: string;
  keys: FileKeyring;
  taskQueue: string;
  worker: Worker;
  running: Promise<void>;
}

describe('keyspaces: two databases with a target rekey in one Temporal namespace', () => {
  let env: TestWorkflowEnvironment;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-keyspaces-'));
  const deployments: Deployment[] = [];
  let a: Deployment;
  let b: Deployment;

  async function deploy(name: string): Promise<Deployment> {
    const db = await createTestDatabase();
    const keyringFile = path.join(scratch, `${name}.json`);
    const keys = FileKeyring.open(keyringFile, { create: true });
    await generateKek(keys, 'v1');
    await generateKek(keys, 'v2');
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 200 });
    const taskQueue = `keyspaces-${name}`;
    const worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue,
      db: db.pool,
      keys,
      temporal: env.client,
      workflowBundle: workflowBundle(),
    });
    const deployment = { name, db, keyringFile, keys, taskQueue, worker, running: worker.run() };
    deployments.push(deployment);
    return deployment;
  }

  /** The built CLI as that deployment's operator runs it: DATABASE_URL names its database (unless `withoutDatabase`). */
  function rekey(at: Deployment, args: string[], options: { withoutDatabase?: boolean } = {}): Promise<CliResult> {
    return runRekeyAt(env.address, at.taskQueue, args, {
      ...(!options.withoutDatabase && { DATABASE_URL: at.db.url }),
      REKEY_KEY_PROVIDER: 'file',
      REKEY_KEYRING_FILE: at.keyringFile,
    });
  }

  beforeAll(async () => {
    env = await createDevServerEnv();
    a = await deploy('a');
    b = await deploy('b');
  });

  afterAll(async () => {
    for (const d of deployments) d.worker.shutdown();
    await Promise.all(deployments.map((d) => d.running));
    for (const d of deployments) d.keys.close();
    await Promise.all(deployments.map((d) => d.db.drop()));
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('Finding 9: the two rotate at once, each under its own workflow id; rekey status rekey shows the run of the database DATABASE_URL names, never the other’s; kek-status says which id', async () => {
    const [ka, kb] = [await keyspaceIn(a.db.pool), await keyspaceIn(b.db.pool)];
    const started: string[] = [];
    for (const d of [a, b]) {
      const run = await rekey(d, ['rotate', '--from', 'v1', '--to', 'v2', '--grace', '1h']);
      expect(run, run.stderr).toMatchObject({ code: 0, stderr: '' });
      started.push(/started rotation (\S+)/.exec(run.stdout)![1]!);
    }
    expect(started[0]!.startsWith(`kek-rotation-rekey.${shortDatabaseId(ka)}@`)).toBe(true);
    expect(started[1]!.startsWith(`kek-rotation-rekey.${shortDatabaseId(kb)}@`)).toBe(true);

    for (const [d, opId] of [
      [a, started[0]!],
      [b, started[1]!],
    ] as const) {
      await progressUntil(
        env.client.workflow.getHandle<typeof rotateKek>(opId.split('@')[0]!),
        (p) => p.phase === 'grace',
      );
      const status = await rekey(d, ['status', 'rekey']);
      expect(status.stdout).toContain(`rotation ${opId}: Running: grace`);
      // An op id names the run without a database: DATABASE_URL is not needed for it.
      const direct = await rekey(d, ['status', opId], { withoutDatabase: true });
      expect(direct.stdout).toContain(`rotation ${opId}: Running: grace`);
    }
    // A target name needs the database it is in.
    const nameless = await rekey(a, ['status', 'rekey'], { withoutDatabase: true });
    expect(nameless.code).toBe(2);
    expect(nameless.stderr).toMatch(/DATABASE_URL is not set/);

    const kekStatus = await rekey(a, ['kek-status']);
    expect(kekStatus.stdout).toContain(`  keyspace: table rekey.tenant_deks in database ${ka.databaseId}`);
    expect(kekStatus.stdout).toContain(`  rotations run under the workflow id ${rotationWorkflowId('rekey', ka)}`);
    const json = JSON.parse((await rekey(b, ['--json', 'kek-status'])).stdout) as Record<string, unknown>;
    expect(json).toMatchObject({
      keyspace: { id: kb.id, database_id: kb.databaseId, table: 'rekey.tenant_deks' },
      workflow_id: rotationWorkflowId('rekey', kb),
    });

    for (const d of [a, b]) expect((await rekey(d, ['abort', 'rekey', '--reason', 'test over'])).code).toBe(0);
    // Each abort ended its own database's run only.
    for (const opId of started) {
      const report = await env.client.workflow.getHandle<typeof rotateKek>(opId.split('@')[0]!).result();
      expect(report.outcome).toBe('aborted');
    }
    // rekey history rekey lists the runs of the database DATABASE_URL names, never the other's, though Temporal's
    // visibility lists both under the target rekey.
    for (const [d, opId] of [
      [a, started[0]!],
      [b, started[1]!],
    ] as const) {
      const listed = await rekey(d, ['--json', 'history', 'rekey']);
      expect(listed, listed.stderr).toMatchObject({ code: 0 });
      expect((JSON.parse(listed.stdout) as History).runs.map((run) => [run.opId, run.state])).toEqual([
        [opId, 'aborted'],
      ]);
    }
  });

  it("a run's end is recorded only in its keyspace's database: a worker of another database answers so and writes nothing", async () => {
    const [ka, kb] = [await keyspaceIn(a.db.pool), await keyspaceIn(b.db.pool)];
    const bActivities = createActivities({ db: b.db.pool, keys: b.keys });
    const rows = async () =>
      (await b.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM rekey.run_history')).rows[0]!.n;
    const before = await rows();
    const answer = await bActivities.recordRun({
      workflowId: rotationWorkflowId('rekey', ka),
      runId: '00000000-0000-4000-8000-000000000000',
      target: 'rekey',
      keyspace: ka.id,
      kind: 'rotation',
      from: 'v1',
      to: 'v2',
      startedAt: Date.now() - 1_000,
      endedAt: Date.now(),
      state: 'succeeded',
      reason: 'test',
      rowsTotal: 0,
      rowsMoved: 0,
      rowsUnreadable: 0,
    });
    expect(answer).toEqual({
      recorded: false,
      why: `run ${rotationWorkflowId('rekey', ka)} belongs to keyspace ${ka.id}, but target 'rekey' is keyspace ${kb.id} on this worker (database ${kb.databaseId}): not recorded here`,
    });
    expect(await rows()).toBe(before);
  });

  it('Finding 9: a rotation started by hand under another workflow id is refused at its first step, naming the id to use; nothing is written', async () => {
    const keyspace = await keyspaceIn(a.db.pool);
    const registry = new KekRegistry(a.db.pool, BUILTIN_TARGET);
    const before = await registry.list();
    for (const workflowId of [
      'whatever',
      'kek-rotation-rekey',
      rotationWorkflowId('rekey', await keyspaceIn(b.db.pool)),
    ]) {
      const handle = await env.client.workflow.start(rotateKek, {
        taskQueue: a.taskQueue,
        workflowId,
        args: [{ from: 'current', to: 'new' }],
      });
      const failure = await resultWithin(handle).catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(WorkflowFailedError);
      expect((failure as WorkflowFailedError).cause?.message).toBe(
        `a rotation of target 'rekey' in keyspace ${keyspace.id} runs under the workflow id ${rotationWorkflowId('rekey', keyspace)}, not '${workflowId}': ` +
          'start it again under that id (rekey rotate and the admin API do; rekey kek-status prints it)',
      );
    }
    expect(await registry.list()).toEqual(before);
  });

  it("Finding 9: a step of one database's rotation that reaches a worker of another database is refused, naming both; nothing is written there", async () => {
    const [ka, kb] = [await keyspaceIn(a.db.pool), await keyspaceIn(b.db.pool)];
    const registry = new KekRegistry(b.db.pool, BUILTIN_TARGET);
    const before = await registry.list();
    // A's rotation, sent to B's task queue (one queue shared by two databases' workers): refused at its first step,
    // which is the start's answer.
    const refused = await startRotation(
      env.client,
      { from: 'current', to: 'new' },
      { taskQueue: b.taskQueue, keyspace: ka },
    ).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(RunFailedError);
    expect(refused).toMatchObject({
      kind: 'refused',
      message:
        `this step belongs to keyspace ${ka.id}, but target 'rekey' is keyspace ${kb.id} on this worker (database ${kb.databaseId}): ` +
        "a worker of another database polls this task queue; give each database's workers a task queue of their own (REKEY_TASK_QUEUE)",
    });
    // Its end is not recorded in B's history either (B's worker took that step too).
    const recorded = await b.db.pool.query('SELECT 1 FROM rekey.run_history WHERE workflow_id = $1', [
      rotationWorkflowId('rekey', ka),
    ]);
    expect(recorded.rowCount).toBe(0);
    expect(await registry.list()).toEqual(before);
  });

  it('a rotation an older build left running under kek-rotation-rekey holds back a new start (exit 4), and rekey status rekey shows it until it ends', async () => {
    // An older build's run: its first step ran before this build's check existed (here, a worker whose validate
    // step never answers keeps it running, as a run in grace would be).
    const legacyQueue = 'keyspaces-legacy';
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const legacyWorker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: legacyQueue,
      workflowBundle: workflowBundle(),
      activities: { validateRotation: () => released.then(() => Promise.reject(new Error('test over'))) },
    });
    await legacyWorker.runUntil(async () => {
      const legacy = await env.client.workflow.start(rotateKek, {
        taskQueue: legacyQueue,
        workflowId: 'kek-rotation-rekey',
        args: [{ from: 'v2', to: 'new' }],
      });
      await progressUntil(legacy, (p) => p.phase === 'validate');
      const opId = `kek-rotation-rekey@${legacy.firstExecutionRunId}`;
      try {
        const refused = await rekey(a, ['rotate', '--from', 'current', '--to', 'new']);
        expect(refused).toMatchObject({
          code: 4,
          stderr: `rekey: a rotation of target 'rekey' is already running: ${opId}; watch it with 'rekey status ${opId} --watch'\n`,
        });
        expect((await rekey(a, ['status', 'rekey'])).stdout).toContain(`rotation ${opId}: Running: validate`);
      } finally {
        await legacy.terminate('test over');
        release();
      }
      // Once it has ended, the target's name finds this build's runs again.
      expect((await rekey(a, ['status', 'rekey'])).stdout).toContain(
        `rotation ${rotationWorkflowId('rekey', await keyspaceIn(a.db.pool))}@`,
      );
    });
  });

  it("Finding (a run from before keyspaces in every database's history): a run under kek-rotation-rekey whose input names no database is listed once in each database's history, marked as from before keyspaces with its database unknown; one whose input names database a is a's alone", async () => {
    const legacyQueue = 'keyspaces-legacy-history';
    const legacyWorker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: legacyQueue,
      workflowBundle: workflowBundle(),
      activities: {
        // An older build's run that ended at its first step, and recorded its end in no database.
        validateRotation: () => Promise.reject(ApplicationFailure.nonRetryable('an older build’s run, ended', 'Test')),
        recordRun: () => Promise.resolve({ recorded: false, why: 'an older build' }),
      },
    });
    const ka = await keyspaceIn(a.db.pool);
    const legacyRun = async (request: Record<string, string>) => {
      const handle = await env.client.workflow.start(rotateKek, {
        taskQueue: legacyQueue,
        workflowId: 'kek-rotation-rekey',
        args: [request as never],
        typedSearchAttributes: new TypedSearchAttributes([{ key: RekeyTarget, value: 'rekey' }]),
      });
      await handle.result().catch(() => undefined);
      return `kek-rotation-rekey@${handle.firstExecutionRunId}`;
    };
    const [inA, unknown] = await legacyWorker.runUntil(async () => [
      await legacyRun({ from: 'v1', to: 'v2', keyspace: ka.id }),
      await legacyRun({ from: 'v1', to: 'v2' }),
    ]);
    for (const d of [a, b]) {
      const runs = await eventually(`${d.name}'s history listing ${unknown}`, async () => {
        const listed = await rekey(d, ['--json', 'history', 'rekey']);
        const history = JSON.parse(listed.stdout) as History;
        return history.runs.some((run) => run.opId === unknown) && history.runs;
      });
      const listedUnknown = runs.filter((run) => run.opId === unknown);
      expect(listedUnknown).toHaveLength(1);
      expect(listedUnknown[0]!.databaseUnknown).toContain(
        "started before keyspaces under kek-rotation-rekey, an id that names no database; neither this database's run history nor the run's input says which database it rotated",
      );
      const ofA = runs.filter((run) => run.opId === inA);
      if (d === a) expect(ofA.map((run) => run.databaseUnknown)).toEqual([undefined]);
      else expect(ofA).toEqual([]);
    }
    expect((await rekey(b, ['history', 'rekey'])).stdout).toContain(
      '    database unknown: started before keyspaces under kek-rotation-rekey',
    );
  });

  it('Finding 8: a destruction already running for the same KEK of the same keyspace covers a new retirement, and the run says so instead of dropping it', async () => {
    const c = await deploy('c');
    const keyspace = await keyspaceIn(c.db.pool);
    const destroyId = destroyWorkflowIdOf('rekey', keyspace, 'v1');
    // v1 was retired once, restored, and is now retired again: its first destruction still waits for its window.
    const earlier = await env.client.workflow.start(destroyRetiredKek, {
      taskQueue: c.taskQueue,
      workflowId: destroyId,
      args: [{ target: 'rekey', kekId: 'v1', restoreWindowMs: 86_400_000, keyspace: keyspace.id }],
    });
    try {
      const started = await startRotation(
        env.client,
        { from: 'v1', to: 'v2', gracePeriod: '1s', fleetLiveWithin: '1h' },
        { taskQueue: c.taskQueue, keyspace },
      );
      const report = await resultWithin<RotationReport>(started.handle);
      expect(report.outcome).toBe('completed');
      expect(report.note).toBe(
        `'v1' retired; its destruction was already scheduled (${destroyId}, the same KEK of the same keyspace, restored and retired since): ` +
          "it destroys 'v1' only once its restore window, counted from this retirement, has ended",
      );
      expect((await earlier.describe()).status.name).toBe('RUNNING');
    } finally {
      await earlier.terminate('test over');
    }
  });

  it('Finding 9: two targets that resolve to one database and one table through two URLs are refused when opened, naming both', async () => {
    const otherUrl = new URL(a.db.url);
    otherUrl.searchParams.set('application_name', 'another-name-for-the-same-database');
    const config = parseTargetsConfig(
      `targets:\n  talos-b:\n    preset: talos\n    database: { url: "${otherUrl.toString()}" }\n    keys: { provider: env, prefix: TALOSB }\n`,
      'rekey.yaml',
      { DATABASE_URL: a.db.url },
    );
    const targets = new TargetRuntimes({ db: a.db.pool, keys: a.keys, config, env: { DATABASE_URL: a.db.url } });
    try {
      const refused = await targets.get('talos-b').catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(TargetConfigError);
      const { databaseId } = await keyspaceIn(a.db.pool);
      expect((refused as Error).message).toBe(
        `targets 'talos' and 'talos-b' are one keyspace: both are table public.secrets in database ${databaseId} (two URLs of one database): ` +
          "two registries and two rotations of one table would each move the other's rows. Remove one of them from the file REKEY_CONFIG names, or point it at its own table",
      );
    } finally {
      await targets.close();
    }
  });
});
