// What an operator with only the temporal CLI (or tctl) sees of a run that failed: its `progress` query, answered by a
// worker that replays the closed run, says how it ended, as rekey status and the admin API do.
import { randomBytes, randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startMigration } from '../../src/client/migrations';
import { startRotation } from '../../src/client/rotations';
import { migrationWorkflowIdOf } from '../../src/rotation/identity';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createTalosSchema, seedSecrets } from '../helpers/talos';
import { createDevServerEnv, resultWithin, workflowBundle } from '../helpers/temporal';
import { asTyped, documentedLine, operatorEnv, runLine } from '../helpers/as-typed';

/**
 * docs/04's `temporal workflow query` line, run as an operator types it (test/helpers/as-typed.ts): in bash, the server
 * in TEMPORAL_ADDRESS and WF in the shell, as the page's lines set them. Its answer, parsed from the CLI's plain output.
 */
async function temporalQuery(address: string, workflowId: string): Promise<Record<string, unknown>> {
  const line = documentedLine(
    'docs/04-rotate-watch-pause-confirm.md',
    'temporal workflow query  --workflow-id "$WF" --name progress',
  );
  const servers = { temporalAddress: address };
  const result = await runLine(asTyped(line, {}, servers), { ...operatorEnv(servers), WF: workflowId }, 30_000);
  expect({ line, code: result.code, stderr: result.stderr }).toEqual({ line, code: 0, stderr: '' });
  const json = result.stdout.slice(result.stdout.search(/[[{]/));
  const parsed = JSON.parse(json) as Record<string, unknown> | Record<string, unknown>[];
  return Array.isArray(parsed) ? parsed[0]! : parsed;
}

describe('the progress query of a failed run, through the temporal CLI', () => {
  let env: TestWorkflowEnvironment;

  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it("Finding: the progress query of a rotation that failed (ApplicationNotReady in promote) answered outcome 'running' to temporal workflow query while rekey status said failed; it says outcome 'failed', with the failure's type, kind and message, in the step it failed in", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    const taskQueue = `failed-query-${randomUUID()}`;
    const [v1, v2] = [randomBytes(32), randomBytes(32)];
    const keys = { TALOS_KEK_v1: v1.toString('base64url'), TALOS_KEK_v2: v2.toString('base64url') };
    try {
      await seedSecrets(db.pool, v1, 'v1', 3, 'v1');
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: keys }),
      });
      const answer = await worker.runUntil(async () => {
        const { handle } = await startRotation(
          env.client,
          { target: 'talos', from: 'v1', to: 'v2', confirmTimeout: '1s' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'talos') },
        );
        await expect(resultWithin(handle, 60_000)).rejects.toThrow('Workflow execution failed');
        return temporalQuery(env.address, handle.workflowId);
      });
      expect(answer).toMatchObject({
        outcome: 'failed',
        phase: 'promote',
        failure: {
          type: 'ApplicationNotReady',
          kind: 'failed',
          message: expect.stringMatching(/^waited 1s for the application to promote/) as unknown,
        },
      });
      expect(answer.waiting).toBeUndefined();
    } finally {
      await db.drop();
    }
  });

  it("Finding: the progress query of a migration that failed (its plan step refused a target with no fields to migrate) answered as if it were still planning; it says outcome 'failed', with the refusal's type, kind and message", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    const taskQueue = `failed-query-migration-${randomUUID()}`;
    try {
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: {} }),
      });
      const keyspace = await keyspaceIn(db.pool, 'talos');
      const answer = await worker.runUntil(async () => {
        await expect(startMigration(env.client, { target: 'talos' }, { taskQueue, keyspace })).rejects.toThrow(
          /no fields|fields/,
        );
        const handle = env.client.workflow.getHandle(migrationWorkflowIdOf('talos', keyspace));
        await expect(resultWithin(handle, 60_000)).rejects.toThrow('Workflow execution failed');
        return temporalQuery(env.address, handle.workflowId);
      });
      expect(answer).toMatchObject({
        outcome: 'failed',
        failure: { kind: 'invalid', message: expect.stringContaining('field') as unknown },
      });
      expect((answer.failure as { type: string }).type).toMatch(/Error$/);
    } finally {
      await db.drop();
    }
  });
});
