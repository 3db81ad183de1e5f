// `npm run record-histories`: records workflow histories from this build into
// test/workflows/histories/<commit>/, for the replay test. Run it at a commit whose workflow code changed.
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { randomBytes, randomUUID } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { Worker } from '@temporalio/worker';
import { createActivities } from '../../src/activities';
import { TargetRuntimes } from '../../src/targets/runtime';
import fs from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProgressReport } from '../../src/rotation/progress';
import { AppInstances } from '../../src/store/app-instances';
import {
  abortSignal,
  confirmStepUpdate,
  overrideFleetGateUpdate,
  pauseUpdate,
  progressQuery,
  resumeSignal,
  rotateKek,
  scheduleNotices,
  setGraceUpdate,
} from '../../src/workflows';
import { startRotation } from '../../src/client/rotations';
import { RotationFixture } from '../helpers/rotation-fixture';
import { createTimeSkippingEnv, progressUntil, untilNoActivityPending, workflowBundle } from '../helpers/temporal';
import { createTestDatabase, migrateDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { createTalosSchema, seedSecrets } from '../helpers/talos';
import { rotationWorkflowId, workflowIdFor } from '../../src/client/rotations';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { startMigration } from '../../src/client/migrations';
import { migrateDek, migrationProgressQuery, pauseMigrationUpdate, resumeMigrationUpdate } from '../../src/workflows';
import type { MigrationReport } from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { createMyceliumSchema, kekOf, myceliumShape, seedLegacyInventory } from '../helpers/mycelium';

const out = path.join(__dirname, '..', 'workflows', 'histories', process.env.HISTORY_BUILD ?? 'unknown');

describe('record', () => {
  let env: TestWorkflowEnvironment;
  beforeAll(async () => {
    env = await createTimeSkippingEnv();
    fs.mkdirSync(out, { recursive: true });
  });
  afterAll(async () => {
    await env?.teardown();
  });

  async function save(name: string, handle: WorkflowHandle, runId?: string) {
    const h = runId ? env.client.workflow.getHandle(handle.workflowId, runId) : handle;
    const history = await h.fetchHistory();
    fs.writeFileSync(path.join(out, `${name}.json`), historyToJSON(history));
  }

  function waitFor(handle: WorkflowHandle<typeof rotateKek>, predicate: (p: ProgressReport) => boolean) {
    return progressUntil(handle, predicate, { withinMs: 60_000 });
  }

  const slow = { from: 'v1', to: 'v2', batchSize: 20, parallelism: 2, sliceTimeBudget: '150ms' };

  it('full rotation with pause, resume and grace update; partial histories while paused and in grace', async () => {
    const fixture = await RotationFixture.create({ tenants: 3_000 });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const handle = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [{ ...slow, gracePeriod: '7d' }],
        });
        await waitFor(handle, (p) => p.counters.rewrapped > 0);
        await handle.executeUpdate(pauseUpdate);
        // Recorded once the slices have stopped (their cancellations in the history).
        await untilNoActivityPending(handle);
        await save('paused-in-rewrap', handle);
        await handle.signal(resumeSignal);
        await waitFor(handle, (p) => p.phase === 'grace');
        await save('in-grace', handle);
        await handle.executeUpdate(setGraceUpdate, { args: [{ extendBy: '1d' }] });
        const result = await handle.result();
        expect(result.outcome).toBe('completed');
        await save('completed-pause-resume-grace-update', handle);
      });
    } finally {
      await fixture.drop();
    }
  });

  it('continue-as-new', async () => {
    const fixture = await RotationFixture.create({ tenants: 2_000 });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const handle = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [{ ...slow, sliceTimeBudget: '100ms', maxHistoryEvents: 60, gracePeriod: '1d' }],
        });
        const result = await handle.result();
        expect(result.outcome).toBe('completed');
        await save('continue-as-new-first-run', handle, handle.firstExecutionRunId);
        await save('continue-as-new-last-run', handle);
      });
    } finally {
      await fixture.drop();
    }
  });

  it('abort after promotion', async () => {
    const fixture = await RotationFixture.create({ tenants: 3_000 });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const handle = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [slow],
        });
        await waitFor(handle, (p) => p.counters.rewrapped > 0);
        await handle.signal(abortSignal, 'change freeze');
        const result = await handle.result();
        expect(result.outcome).toBe('aborted');
        await save('aborted-mid-rewrap', handle);
      });
    } finally {
      await fixture.drop();
    }
  });

  it('fleet gate override', async () => {
    const fixture = await RotationFixture.create({ tenants: 100 });
    await new AppInstances(fixture.db.pool, BUILTIN_TARGET).announce({
      instanceId: 'old-pod',
      unwrapKekIds: ['v1'],
      wrapKekId: 'v1',
      kekFingerprints: {},
    });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const handle = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [{ from: 'v1', to: 'v2', gracePeriod: '1d', fleetLiveWithin: '30d', fleetTimeout: '10d' }],
        });
        await waitFor(handle, (p) => p.phase === 'promote' && p.fleet !== undefined);
        await env.sleep('1h');
        await handle.executeUpdate(overrideFleetGateUpdate, { args: ['drained'] });
        // Builds after 47ef157: an override lets one gate go; the gate before the last passes waits again.
        await waitFor(handle, (p) => p.waiting?.step === 'last-passes' || p.phase === 'grace' || p.phase === 'done');
        if ((await handle.query(progressQuery)).waiting?.step === 'last-passes') {
          await handle.executeUpdate(overrideFleetGateUpdate, { args: ['gone'] });
        }
        const result = await handle.result();
        expect(result.outcome).toBe('completed');
        await save('fleet-override', handle);
      });
    } finally {
      await fixture.drop();
    }
  });

  it('dry run and canary', async () => {
    const fixture = await RotationFixture.create({ tenants: 300 });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const dry = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: workflowIdFor({ from: 'v1', to: 'v2', dryRun: true }, await keyspaceIn(fixture.db.pool)),
          args: [{ from: 'v1', to: 'v2', dryRun: true }],
        });
        expect((await dry.result()).outcome).toBe('dry-run');
        await save('dry-run', dry);
        const canary = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [{ from: 'v1', to: 'v2', tenantId: 'tenant-00000007' }],
        });
        expect((await canary.result()).outcome).toBe('canary');
        await save('canary', canary);
      });
    } finally {
      await fixture.drop();
    }
  });

  it('started as the clients start it (Update-with-Start, the validated update): a dry run, and a refused rotation', async () => {
    const fixture = await RotationFixture.create({ tenants: 300 });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const keyspace = await keyspaceIn(fixture.db.pool);
        const options = { taskQueue: fixture.taskQueue, keyspace };
        const dry = await startRotation(env.client, { from: 'v1', to: 'v2', dryRun: true }, options);
        expect(dry.kind === 'started' && dry.validated?.from).toBe('v1');
        expect((await dry.handle.result()).outcome).toBe('dry-run');
        await save('validated-dry-run', dry.handle);
        const workflowId = rotationWorkflowId(BUILTIN_TARGET, keyspace);
        await expect(startRotation(env.client, { from: 'v1', to: 'v9' }, options)).rejects.toThrow(/unknown KEK 'v9'/);
        await save('validated-refused', env.client.workflow.getHandle(workflowId));
      });
    } finally {
      await fixture.drop();
    }
  });

  it('talos: an application-owned target, promotion by configuration, retirement confirmed by an operator', async () => {
    const db = await createTestDatabase({ migrate: false });
    await createTalosSchema(db.pool);
    await migrateDatabase(db.pool);
    const keks = { v1: randomBytes(32), v2: randomBytes(32) };
    const talosEnv: NodeJS.ProcessEnv = {
      TALOS_KEK_v1: keks.v1.toString('base64url'),
      TALOS_KEK_v2: keks.v2.toString('base64url'),
      TALOS_CURRENT_KEK_ID: 'v2',
    };
    const targets = new TargetRuntimes({ db: db.pool, keys: testKeys(['v1']), env: talosEnv });
    try {
      await seedSecrets(db.pool, keks.v1, 'v1', 50, 'v1');
      const taskQueue = `talos-${randomUUID()}`;
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), targets, env: talosEnv }),
      });
      await worker.runUntil(async () => {
        const handle = await env.client.workflow.start(rotateKek, {
          taskQueue,
          workflowId: await rotationIdIn(db.pool, 'talos'),
          args: [{ target: 'talos', from: 'v1', to: 'v2', gracePeriod: '1h' }],
        });
        await waitFor(handle, (p) => p.phase === 'grace');
        await env.sleep('2h');
        await waitFor(handle, (p) => p.waiting?.step === 'retire');
        await handle.executeUpdate(confirmStepUpdate, {
          args: [{ step: 'retire', note: 'TALOS_KEK_v1 removed from every gateway' }],
        });
        const result = await handle.result();
        expect(result.outcome).toBe('completed');
        await save('talos-confirm-retire', handle);
      });
    } finally {
      await targets.close();
      await db.drop();
    }
  });

  // A migration (`rekey migrate-dek`) lives for hours: its histories replay like a rotation's. Mycelium's v1 values
  // in all four places, moved in small parts by a worker holding generation 1.
  async function migration(
    name: string,
    request: { batchSize: number; parallelism: number; sliceTimeBudget?: string; maxHistoryEvents?: number },
    drive: (handle: WorkflowHandle<typeof migrateDek>) => Promise<void>,
  ) {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const tokenSecret = randomUUID();
    try {
      await seedLegacyInventory(db.pool, kekOf(tokenSecret), { tenants: 40, users: 20 });
      const taskQueue = `migrate-${name}-${randomUUID()}`;
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: { MYC_TOKEN_SECRET: tokenSecret } }),
      });
      await worker.runUntil(async () => {
        const started = await startMigration(
          env.client,
          { target: 'mycelium', kekVersion: '1', ...request },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await drive(started.handle);
      });
    } finally {
      await db.drop();
    }
  }

  it('migration: runs to the end', async () => {
    await migration('completed', { batchSize: 5, parallelism: 2 }, async (handle) => {
      const report = await handle.result();
      expect(report.outcome).toBe('completed');
      await save('migration-completed', handle);
    });
  });

  it('migration: paused mid-run, resumed, completed; partial history while paused', async () => {
    await migration('paused', { batchSize: 1, parallelism: 2, sliceTimeBudget: '1ms' }, async (handle) => {
      await progressUntil<MigrationReport>(handle, (p) => p.totals.migrated >= 2, { withinMs: 60_000 });
      const paused = await handle.executeUpdate(pauseMigrationUpdate);
      expect(paused.paused).toBe(true);
      await untilNoActivityPending(handle);
      await progressUntil<MigrationReport>(handle, (p) => p.partsRunning === 0, { withinMs: 60_000 });
      await save('migration-paused', handle);
      await handle.executeUpdate(resumeMigrationUpdate);
      const report = await handle.result();
      expect(report.outcome).toBe('completed');
      expect((await handle.query(migrationProgressQuery)).paused).toBe(false);
      await save('migration-paused-resumed-completed', handle);
    });
  });

  it('migration: continues as new', async () => {
    await migration(
      'continue-as-new',
      { batchSize: 2, parallelism: 2, sliceTimeBudget: '1ms', maxHistoryEvents: 40 },
      async (handle) => {
        const report = await handle.result();
        expect(report.outcome).toBe('completed');
        const last = await handle.fetchHistory();
        const firstRunId = last.events?.[0]?.workflowExecutionStartedEventAttributes?.firstExecutionRunId ?? '';
        const first = env.client.workflow.getHandle(handle.workflowId, firstRunId);
        expect((await first.describe()).status.name).toBe('CONTINUED_AS_NEW');
        await save('migration-continue-as-new-first-run', handle, firstRunId);
        await save('migration-continue-as-new-last-run', handle);
      },
    );
  });

  it('schedule notice: the receiver refuses it, then takes it; the schedule is deleted after its rotation', async () => {
    const taskQueue = `notices-${randomUUID()}`;
    const start = await env.currentTimeMs();
    const rotationAt = start + 10 * 86_400_000;
    let refusals = 0;
    const now = () => Context.current().info.scheduledTimestampMs;
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: {
        nextScheduledRotation: () =>
          Promise.resolve(
            now() > rotationAt + 86_400_000
              ? { exists: false, paused: false }
              : {
                  exists: true,
                  paused: false,
                  ...(now() < rotationAt && { nextRun: new Date(rotationAt).toISOString() }),
                },
          ),
        sendRotationNotice: () => {
          if (++refusals <= 3) return Promise.reject(new Error('the notice webhook answered 503'));
          return Promise.resolve({ webhookStatus: 204 });
        },
      },
    });
    await worker.runUntil(async () => {
      const handle = await env.client.workflow.start(scheduleNotices, {
        taskQueue,
        workflowId: `notices-${randomUUID()}`,
        args: [
          { scheduleId: 'quarterly', target: 'talos', notifyBefore: '7d', webhookUrl: 'http://127.0.0.1:9/rekey' },
        ],
      });
      const state = await handle.result();
      expect(state.noticedFor).toBe(new Date(rotationAt).toISOString());
      await save('schedule-notice-refused-then-delivered', handle);
    });
  });
});
