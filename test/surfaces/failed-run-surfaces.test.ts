// A rotation that failed at a step tells the same truth on every surface at once: `rekey status`, the `progress` query
// (what `temporal workflow query` and tctl answer) and the Web UI's current details of its page.
import { randomBytes, randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startMigration } from '../../src/client/migrations';
import { startRotation } from '../../src/client/rotations';
import { migrationWorkflowIdOf } from '../../src/rotation/identity';
import type { ProgressReport } from '../../src/rotation/progress';
import { RekeyPhase } from '../../src/workflows/search-attributes';
import { buildAdminServer } from '../../src/admin/server';
import { WORKFLOW_FAILURE_ANSWERS } from '../../src/errors';
import { loadTargetsConfig } from '../../src/targets/config';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRekey, runRekeyAt } from '../helpers/cli';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createTalosSchema, seedSecrets } from '../helpers/talos';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

describe('a failed rotation, on every surface at once', () => {
  const server = useTimeSkippingEnv();

  /**
   * A worker for `db` (Talos's, 3 secrets under v1) and how to start a rotation v1 → v2 with a confirmation timeout of
   * 1 s, which fails waiting for the application to promote (Talos's settings name no current KEK); `statusOf` runs
   * `rekey status --json` of a run, with or without the worker.
   */
  async function failingInPromote(db: TestDatabase) {
    const taskQueue = `failed-run-${randomUUID()}`;
    const [v1, v2] = [randomBytes(32), randomBytes(32)];
    const env = { TALOS_KEK_v1: v1.toString('base64url'), TALOS_KEK_v2: v2.toString('base64url') };
    await seedSecrets(db.pool, v1, 'v1', 3, 'v1');
    const worker = await Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }),
    });
    const start = async () => {
      const { handle } = await startRotation(
        server.env.client,
        { target: 'talos', from: 'v1', to: 'v2', confirmTimeout: '1s' },
        { taskQueue, keyspace: await keyspaceIn(db.pool, 'talos') },
      );
      await expect(resultWithin(handle, 60_000)).rejects.toThrow('Workflow execution failed');
      return handle;
    };
    const rekey = (...args: string[]) =>
      runRekeyAt(server.env.address, taskQueue, args, {
        DATABASE_URL: db.url,
        ...env,
      });
    const statusOf = (workflowId: string) => rekey('--json', 'status', workflowId);
    return { worker, start, statusOf, rekey };
  }

  it("Finding: a rotation that failed waiting for the application to promote (--confirm-timeout) still said 'Waiting for the application: promote' with the rekey confirm command in the Web UI's current details, and its progress query still offered that command, while rekey status said failed; now the details say Failed with rekey status's reason, and neither offers a command", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    try {
      const { worker, start, statusOf } = await failingInPromote(db);
      // Every surface asked while the worker runs: a closed run's query is answered by replaying it on a worker.
      const seen = await worker.runUntil(async () => {
        const handle = await start();
        const asked = await statusOf(handle.workflowId);
        const progress = await handle.query<ProgressReport>('progress');
        const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
        return { status: asked.stdout, progress, details: metadata.currentDetails ?? '' };
      });
      const status = JSON.parse(seen.status) as {
        status: string;
        run: { state: string; reason: string; step: string };
      };
      expect(status.status).toBe('FAILED');
      expect(status.run.state).toBe('failed');
      expect(status.run.reason).toMatch(/^waited 1s for the application to promote/);
      // The Web UI's page said "Waiting for the application: promote" with the confirm command beside Temporal's
      // "Failed", and the query offered the same command: a run that failed takes no confirmation.
      expect(seen.details.split('\n\n')).toEqual([
        `**Failed:** ${status.run.reason}`,
        '**Error:** `application_not_ready` (failed)',
        `**Next:** ${WORKFLOW_FAILURE_ANSWERS.ApplicationNotReady.next}`,
        '**KEK:** `v1` → `v2` of `talos`',
        '**Rewrapped:** 0 of 0 · CAS conflicts 0 · unreadable 0',
      ]);
      expect(seen.progress.waiting).toBeUndefined();
    } finally {
      await db.drop();
    }
  });

  it("Finding: rekey status of a rotation that failed in promote said step 'validate' (it had no progress to read and took the first step), where the run's RekeyPhase search attribute, the Web UI's column, says promote; it now names the step the run failed in", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    try {
      const { worker, start, statusOf } = await failingInPromote(db);
      const handle = await worker.runUntil(start);
      // No worker now, as after a failure an operator may have none: rekey status reads what Temporal keeps.
      expect((await handle.describe()).typedSearchAttributes.get(RekeyPhase)).toBe('promote');
      const asked = await statusOf(handle.workflowId);
      expect((JSON.parse(asked.stdout) as { run: { state: string; step: string } }).run).toMatchObject({
        state: 'failed',
        step: 'promote',
      });
    } finally {
      await db.drop();
    }
  });
  it("Finding: rekey status of a run that failed on ApplicationNotReady exited 1 with error 'internal' (the 'failed' kind's code, which reads as a bug in rekey); every surface names it application_not_ready, kind failed, with the same message and what to do next: the CLI's --json and plain lines, status --json, the admin API and the Web UI's details", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    const taskQueue = `failed-run-named-${randomUUID()}`;
    const [v1, v2] = [randomBytes(32), randomBytes(32)];
    const env = { TALOS_KEK_v1: v1.toString('base64url'), TALOS_KEK_v2: v2.toString('base64url') };
    const targets = new TargetRuntimes({ db: db.pool, keys: testKeys(['v1']), config: loadTargetsConfig({}), env });
    const api = await buildAdminServer({
      client: server.env.client,
      targets,
      defaultTarget: 'talos',
      taskQueue,
      token: 'failed-run-named-token',
      configuredCurrentKekId: () => undefined,
    });
    try {
      await seedSecrets(db.pool, v1, 'v1', 3, 'v1');
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }),
      });
      const { handle, details } = await worker.runUntil(async () => {
        const started = await startRotation(
          server.env.client,
          { target: 'talos', from: 'v1', to: 'v2', confirmTimeout: '1s' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'talos') },
        );
        await expect(resultWithin(started.handle, 60_000)).rejects.toThrow('Workflow execution failed');
        const metadata = await started.handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
        return { handle: started.handle, details: metadata.currentDetails ?? '' };
      });
      const cliEnv = { PATH: process.env.PATH, DATABASE_URL: db.url, ...env };
      const global = ['--address', server.env.address, '--task-queue', taskQueue];
      const json = await runRekey([...global, '--json', 'status', handle.workflowId], cliEnv);
      const plain = await runRekey([...global, 'status', handle.workflowId], cliEnv);
      const { next } = WORKFLOW_FAILURE_ANSWERS.ApplicationNotReady;

      const status = JSON.parse(json.stdout) as { failure: string; run: { reason: string } };
      expect(status.failure).toMatch(/^waited 1s for the application to promote/);
      expect(status).toMatchObject({
        failureKind: 'failed',
        failureType: 'ApplicationNotReady',
        error: 'application_not_ready',
        next,
      });
      const message = `rotation ${handle.workflowId}@${(await handle.describe()).runId} failed: ${status.failure}`;
      expect({ code: json.code, stderr: JSON.parse(json.stderr) as unknown }).toEqual({
        code: 1,
        stderr: { error: 'application_not_ready', kind: 'failed', message, next, exit: 1 },
      });
      expect({ code: plain.code, stderr: plain.stderr }).toEqual({
        code: 1,
        stderr: `rekey: ${message} (application_not_ready; next: ${next})\n`,
      });
      expect(plain.stdout).toContain(`Failed: ${status.failure}`);

      const answer = await api.inject({
        method: 'GET',
        url: `/admin/v1/secrets/rotation-status/${encodeURIComponent(handle.workflowId)}`,
        headers: { authorization: 'Bearer failed-run-named-token' },
      });
      expect(answer.statusCode).toBe(200);
      expect(answer.json()).toMatchObject({
        status: 'failed',
        outcome: 'failed',
        failure: status.failure,
        last_error: status.failure,
        error: 'application_not_ready',
        error_kind: 'failed',
        error_type: 'ApplicationNotReady',
        next,
      });

      expect(details.split('\n\n').slice(0, 3)).toEqual([
        `**Failed:** ${status.failure}`,
        '**Error:** `application_not_ready` (failed)',
        `**Next:** ${next}`,
      ]);
    } finally {
      await api.close();
      await targets.close();
      await db.drop();
    }
  });

  it("ApplicationNotReady's next step works as typed: given longer with --confirm-timeout, the rotation run again (rekey rotate --target talos --from v1 --to v2 --confirm-timeout 1h) starts under the same id, waits for the application to promote, and rekey confirm --step promote moves it on to the rewrap", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    try {
      const { worker, start, rekey } = await failingInPromote(db);
      await worker.runUntil(async () => {
        const failed = await start();
        const again = await rekey(
          'rotate',
          '--target',
          'talos',
          '--from',
          'v1',
          '--to',
          'v2',
          '--confirm-timeout',
          '1h',
        );
        expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
        expect(again.stdout).toMatch(
          new RegExp(`^started rotation ${failed.workflowId}@\\S+ of target 'talos' \\('v1' → 'v2'\\)`),
        );
        const rerun = server.env.client.workflow.getHandle(failed.workflowId);
        await progressUntil(rerun, (p) => p.waiting?.step === 'promote');
        const confirmed = await rekey(
          'confirm',
          failed.workflowId,
          '--step',
          'promote',
          '--note',
          'TALOS_CURRENT_KEK_ID=v2 on every gateway',
        );
        expect({ code: confirmed.code, stderr: confirmed.stderr }).toEqual({ code: 0, stderr: '' });
        const moved = await progressUntil(rerun, (p) => p.phases.rewrap !== undefined);
        expect(moved.outcome).not.toBe('failed');
      });
    } finally {
      await db.drop();
    }
  });

  it("Finding: docs/11 gave a migration's status as {op_id, execution_status, started_at, completed_at, report} or failure, where a failed migration's also says error, error_kind and error_type (as rotation-status does) and run_status; the admin API's status of a migration its plan step refused (Talos: no fields to migrate) gives them: error bad_request (the kind invalid's code), kind invalid", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    const taskQueue = `failed-migration-${randomUUID()}`;
    const targets = new TargetRuntimes({ db: db.pool, keys: testKeys(['v1']), config: loadTargetsConfig({}), env: {} });
    const api = await buildAdminServer({
      client: server.env.client,
      targets,
      defaultTarget: 'talos',
      taskQueue,
      token: 'failed-migration-token',
      configuredCurrentKekId: () => undefined,
    });
    try {
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: {} }),
      });
      const keyspace = await keyspaceIn(db.pool, 'talos');
      const workflowId = migrationWorkflowIdOf('talos', keyspace);
      await worker.runUntil(async () => {
        await expect(startMigration(server.env.client, { target: 'talos' }, { taskQueue, keyspace })).rejects.toThrow(
          /field/,
        );
        await expect(resultWithin(server.env.client.workflow.getHandle(workflowId), 60_000)).rejects.toThrow(
          'Workflow execution failed',
        );
      });
      const answer = await api.inject({
        method: 'GET',
        url: `/admin/v1/migrations/${encodeURIComponent(workflowId)}`,
        headers: { authorization: 'Bearer failed-migration-token' },
      });
      expect(answer.statusCode).toBe(200);
      const body = answer.json<Record<string, unknown>>();
      expect(body).toMatchObject({
        op_id: workflowId,
        execution_status: 'FAILED',
        failure: expect.stringContaining('field') as unknown,
        error: 'bad_request',
        error_kind: 'invalid',
        error_type: expect.stringMatching(/Error$/) as unknown,
        run_status: expect.objectContaining({ state: 'failed' }) as unknown,
      });
    } finally {
      await api.close();
      await targets.close();
      await db.drop();
    }
  });
});
