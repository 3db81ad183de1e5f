import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../scripts/setup.mjs';
import { rotateKek } from '../../src/workflows';
import { createWorker } from '../../src/worker';
import { useTestDatabase } from '../helpers/database';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';

describe('dev server built from the pinned temporal CLI', () => {
  const db = useTestDatabase();
  let env: TestWorkflowEnvironment;
  let uiPort: number;

  beforeAll(async () => {
    uiPort = await freePort();
    env = await createDevServerEnv({ ui: true, uiPort });
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('runs the workflow through the project worker and lists it by visibility', async () => {
    const taskQueue = `tq-${randomUUID()}`;
    const workflowId = `placeholder-${randomUUID()}`;
    const worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue,
      db: db.pool,
      workflowBundle: workflowBundle(),
    });

    const result = await worker.runUntil(
      env.client.workflow.execute(rotateKek, {
        taskQueue,
        workflowId,
        args: [{ from: 'v1', to: 'v2', gracePeriod: '1 second' }],
      }),
    );
    expect(result.gracedFor).toBe('1 second');

    const listed: string[] = [];
    for await (const execution of env.client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) {
      listed.push(execution.workflowId);
    }
    expect(listed).toEqual([workflowId]);
  });

  it('serves the Web UI on the port it was given', async () => {
    const response = await fetch(`http://127.0.0.1:${uiPort}/`);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('<html');
  });
});
