import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRotation } from '../../src/client/rotations';
import { projectRoot } from '../../src/project-paths';
import { createWorker } from '../../src/worker';
import { progressQuery, type RotationReport } from '../../src/workflows';
import { RotationFixture } from '../helpers/rotation-fixture';
import { eventually } from '../helpers/eventually';
import { createDevServerEnv, resultWithin, workflowBundle, type OwnServerEnvironment } from '../helpers/temporal';
import { rotationWorkflowId } from '../../src/rotation/identity';
import { keyspaceIn } from '../helpers/keyspace';

describe('rotation on the dev server built from the pinned temporal CLI', () => {
  let env: OwnServerEnvironment;

  beforeAll(async () => {
    env = await createDevServerEnv({ ui: true });
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('runs a rotation end to end through the project worker, findable by its search attributes', async () => {
    const fixture = await RotationFixture.create({ tenants: 2_000 });
    try {
      const worker = await createWorker({
        connection: env.nativeConnection,
        taskQueue: fixture.taskQueue,
        db: fixture.db.pool,
        keys: fixture.keys,
        workflowBundle: workflowBundle(),
      });
      const keyspace = await keyspaceIn(fixture.db.pool);
      const workflowId = rotationWorkflowId('rekey', keyspace);
      const report = await worker.runUntil(async () => {
        const started = await startRotation(
          env.client,
          { from: 'v1', to: 'v2', gracePeriod: '1s' },
          { taskQueue: fixture.taskQueue, keyspace },
        );
        expect(started.handle.workflowId).toBe(workflowId);
        expect(started.kind).toBe('started');
        const progress = await started.handle.query(progressQuery);
        expect(progress.from).toBe('v1');
        return started.handle.result();
      });
      expect(report).toMatchObject({ outcome: 'completed', counters: { rewrapped: 2_000 } });
      expect(await fixture.kekState('v1')).toBe('retired');
      await fixture.expectNothingLost();

      const listed: string[] = [];
      const query = `WorkflowId = '${workflowId}' AND RekeyPhase = 'done' AND RekeyFromKek = 'v1' AND RekeyToKek = 'v2'`;
      for await (const execution of env.client.workflow.list({ query })) {
        listed.push(execution.workflowId);
      }
      expect(listed).toEqual([workflowId]);
    } finally {
      await fixture.drop();
    }
  });

  it('two worker processes on one task queue split the slices, and every row moves exactly once', async () => {
    const fixture = await RotationFixture.create({ tenants: 20_000 });
    // One activity at a time each: the two slices running at once cannot both be on one process.
    const workers = [0, 1].map(() =>
      spawn(process.execPath, [path.join(projectRoot, 'dist', 'src', 'worker.js')], {
        env: {
          PATH: process.env.PATH,
          DATABASE_URL: fixture.db.url,
          TEMPORAL_ADDRESS: env.address,
          REKEY_TASK_QUEUE: fixture.taskQueue,
          REKEY_METRICS_PORT: '0',
          REKEY_TEMPORAL_METRICS_PORT: '0',
          REKEY_MAX_CONCURRENT_ACTIVITIES: '1',
          LOG_LEVEL: 'warn',
          ...fixture.keyEnv,
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      }),
    );
    const exited = workers.map((child) => once(child, 'exit'));
    const stderr = workers.map((child) => {
      const lines: string[] = [];
      child.stderr.on('data', (chunk: Buffer) => lines.push(chunk.toString()));
      return lines;
    });
    try {
      const identities = workers.map((child) => `${child.pid}@`);
      // Both poll for activities before the rotation starts: the task queue lists each as a poller.
      await eventually(
        'both worker processes polling the task queue',
        async () => {
          const { pollers } = await env.client.connection.workflowService.describeTaskQueue({
            namespace: 'default',
            taskQueue: { name: fixture.taskQueue },
            taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
          });
          const polling = (pollers ?? []).map((p) => p.identity ?? '');
          return identities.every((id) => polling.some((p) => p.startsWith(id)));
        },
        {
          every: 100,
          failIf: () => (workers.some((child) => child.exitCode !== null) ? 'a worker process exited' : undefined),
          describe: () => `their stderr: ${stderr.map((l) => l.join('')).join(' | ')}`,
        },
      );
      const started = await startRotation(
        env.client,
        { from: 'v1', to: 'v2', gracePeriod: '1s', batchSize: 200, parallelism: 2 },
        { taskQueue: fixture.taskQueue, keyspace: await keyspaceIn(fixture.db.pool) },
      );
      const report = await resultWithin<RotationReport>(started.handle, 120_000);
      expect(report).toMatchObject({ outcome: 'completed', counters: { rewrapped: 20_000, casConflicts: 0 } });
      await fixture.expectNothingLost();

      // Who ran each slice part, as the history records it.
      const history = await started.handle.fetchHistory();
      const scheduled = new Map<string, string>();
      const ranSlices = new Set<string>();
      for (const event of history.events ?? []) {
        const scheduledAttrs = event.activityTaskScheduledEventAttributes;
        if (scheduledAttrs) scheduled.set(String(event.eventId), scheduledAttrs.activityType?.name ?? '');
        const startedAttrs = event.activityTaskStartedEventAttributes;
        if (startedAttrs && scheduled.get(String(startedAttrs.scheduledEventId)) === 'rewrapSlice') {
          ranSlices.add(startedAttrs.identity ?? '');
        }
      }
      expect([...ranSlices].map((id) => identities.findIndex((pid) => id.startsWith(pid))).sort()).toEqual([0, 1]);
    } finally {
      for (const child of workers) child.kill('SIGTERM');
      await Promise.all(exited);
      await fixture.drop();
    }
  });

  it('serves the Web UI at the address it was started with', async () => {
    expect(env.uiUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const response = await fetch(`${env.uiUrl}/`);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('<html');
  });
});
