import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/dev/ports';
import { startRotation } from '../../src/client/rotations';
import { createWorker } from '../../src/worker';
import { progressQuery } from '../../src/workflows';
import { RotationFixture } from '../helpers/rotation-fixture';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';

describe('rotation on the dev server built from the pinned temporal CLI', () => {
  let env: TestWorkflowEnvironment;
  let uiPort: number;

  beforeAll(async () => {
    uiPort = await freePort();
    env = await createDevServerEnv({ ui: true, uiPort });
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
      const workflowId = `kek-rotation-${randomUUID()}`;
      const report = await worker.runUntil(async () => {
        const started = await startRotation(
          env.client,
          { from: 'v1', to: 'v2', gracePeriod: '1s' },
          { taskQueue: fixture.taskQueue, workflowId },
        );
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

  it('serves the Web UI on the port it was given', async () => {
    const response = await fetch(`http://127.0.0.1:${uiPort}/`);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('<html');
  });
});
