import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { rotateKek } from '../../src/workflows';
import { useTestDatabase } from '../helpers/database';
import { createTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

describe('time-skipping test server built from Maven Central', () => {
  const db = useTestDatabase();
  let env: TestWorkflowEnvironment;

  beforeAll(async () => {
    env = await createTimeSkippingEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('a workflow that sleeps 30 days finishes within seconds of wall time', async () => {
    const taskQueue = `tq-${randomUUID()}`;
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool }),
    });
    const serverStart = await env.currentTimeMs();
    const wallStart = Date.now();

    const result = await worker.runUntil(
      env.client.workflow.execute(rotateKek, {
        taskQueue,
        workflowId: `placeholder-${randomUUID()}`,
        args: [{ from: 'v1', to: 'v2', gracePeriod: '30 days' }],
      }),
    );

    expect(result).toMatchObject({ from: 'v1', to: 'v2', gracedFor: '30 days' });
    expect(result.checkedAt).toMatch(/^PostgreSQL 1\d/);
    expect((await env.currentTimeMs()) - serverStart).toBeGreaterThanOrEqual(30 * 24 * 3600 * 1000);
    expect(Date.now() - wallStart).toBeLessThan(20_000);
  });
});
