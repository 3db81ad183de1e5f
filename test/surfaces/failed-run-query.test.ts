// What an operator with only the temporal CLI (or tctl) sees of a run that failed: its `progress` query, answered by a
// worker that replays the closed run, says how it ended, as rekey status and the admin API do.
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { WORKFLOW_FAILURE_ANSWERS } from '../../src/errors';
import { startMigration } from '../../src/client/migrations';
import { startRotation } from '../../src/client/rotations';
import { migrationWorkflowIdOf } from '../../src/rotation/identity';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createTalosSchema, seedSecrets } from '../helpers/talos';
import { createDevServerEnv, resultWithin, workflowBundle } from '../helpers/temporal';
import { asTyped, documentedLine, operatorEnv, runLine } from '../helpers/as-typed';

/** The answer's JSON, after whatever heading the CLI prints (tctl: `Query result:`), the first if it is an array. */
function parsedAnswer(stdout: string): Record<string, unknown> {
  const json = stdout.slice(stdout.search(/[[{]/));
  const parsed = JSON.parse(json) as Record<string, unknown> | Record<string, unknown>[];
  return Array.isArray(parsed) ? parsed[0]! : parsed;
}

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
  return parsedAnswer(result.stdout);
}

/**
 * docs/04's tctl query line, as typed: the server in TEMPORAL_CLI_ADDRESS, WF in the shell, a home of its own (tctl
 * writes its settings there) and tctl's RPC timeout from the environment, for a busy machine.
 */
async function tctlQuery(address: string, workflowId: string, home: string): Promise<Record<string, unknown>> {
  const line = documentedLine(
    'docs/04-rotate-watch-pause-confirm.md',
    'tctl workflow query --workflow_id "$WF" --query_type progress',
  );
  const servers = { temporalAddress: address };
  const shell = { ...operatorEnv(servers), WF: workflowId, HOME: home, TEMPORAL_CONTEXT_TIMEOUT: '30' };
  const result = await runLine(asTyped(line, {}, servers), shell, 40_000);
  expect({ line, code: result.code, stderr: result.stderr }).toEqual({ line, code: 0, stderr: '' });
  return parsedAnswer(result.stdout);
}

describe('the progress query of a failed run, through the temporal CLI and tctl', () => {
  let env: TestWorkflowEnvironment;
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-tctl-home-'));

  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
    fs.rmSync(home, { recursive: true, force: true });
  });

  /** A Talos rotation that fails (ApplicationNotReady in promote: no application confirms within 1s); `ask` runs while a worker polls, so a query of the closed run is answered. */
  async function failedRotation<R>(ask: (workflowId: string) => Promise<R>): Promise<R> {
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
      return await worker.runUntil(async () => {
        const { handle } = await startRotation(
          env.client,
          { target: 'talos', from: 'v1', to: 'v2', confirmTimeout: '1s' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'talos') },
        );
        await expect(resultWithin(handle, 60_000)).rejects.toThrow('Workflow execution failed');
        return ask(handle.workflowId);
      });
    } finally {
      await db.drop();
    }
  }

  /** What the progress query of the failed rotation must say: failed, in promote, with its code and next step. */
  const failedInPromote = {
    outcome: 'failed',
    phase: 'promote',
    failure: {
      type: 'ApplicationNotReady',
      kind: 'failed',
      error: 'application_not_ready',
      message: expect.stringMatching(/^waited 1s for the application to promote/) as unknown,
      next: WORKFLOW_FAILURE_ANSWERS.ApplicationNotReady.next,
    },
  };

  it("Finding: the progress query of a rotation that failed (ApplicationNotReady in promote) answered outcome 'running' to temporal workflow query while rekey status said failed; it says outcome 'failed', with the failure's type, kind and message, in the step it failed in", async () => {
    const answer = await failedRotation((workflowId) => temporalQuery(env.address, workflowId));
    expect(answer).toMatchObject(failedInPromote);
    expect(answer.waiting).toBeUndefined();
  });

  it("Finding: docs/04 gives operators tctl's progress query, never run against a failed run; as typed, against the closed run, it answers outcome 'failed' with the failure's code (application_not_ready) and next step, as temporal workflow query does", async () => {
    const answer = await failedRotation((workflowId) => tctlQuery(env.address, workflowId, home));
    expect(answer).toMatchObject(failedInPromote);
    expect(answer.waiting).toBeUndefined();
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
