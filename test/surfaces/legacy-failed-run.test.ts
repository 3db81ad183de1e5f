// A rotation that an older build started and that failed on it, read after the upgrade: its progress query (what
// `temporal workflow query` and tctl answer, the current worker replaying the run on the old build's code kept in
// src/workflows/legacy/), the Web UI's details, `rekey status` and the admin API all say failed, with the code of the
// error it failed with, as they do for a run of this build.
import { Worker } from '@temporalio/worker';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { firstReleaseRotationWorkflowId } from '../../src/rotation/identity';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { loadTargetsConfig } from '../../src/targets/config';
import { TargetRuntimes } from '../../src/targets/runtime';
import { rotateKek } from '../../src/workflows';
import { runRekey } from '../helpers/cli';
import { workflowBundleOf } from '../helpers/old-build';
import { RotationFixture } from '../helpers/rotation-fixture';
import { createDevServerEnv, resultWithin, workflowBundle } from '../helpers/temporal';
import { asTyped, documentedLine, operatorEnv, runLine } from '../helpers/as-typed';

/** The build before targets, whose rotation code this build keeps in src/workflows/legacy/rotate-kek-47ef157.ts. */
const LEGACY_BUILD = '47ef157e6e3371b4d36283448205981c45125c6d';

describe('a rotation an older build started, which failed, after the upgrade', () => {
  let env: TestWorkflowEnvironment;
  let fixture: RotationFixture;
  beforeAll(async () => {
    env = await createDevServerEnv();
    fixture = await RotationFixture.create({ tenants: 20, dataTenants: 2 });
  });
  afterAll(async () => {
    await fixture?.drop();
    await env?.teardown();
  });

  it("Finding: a rotation build 47ef157 started and failed (its validate step refused v1 → v9, InvalidRotationError) answered outcome 'running' to its progress query once replayed by this build, and its Web UI page had no details; the query says outcome 'failed' with the failure's type, code and message, the details say Failed with the code, and rekey status and the admin API say failed with the same code", async () => {
    // The build before targets named a rotation by its KEKs, and took no keyspace: rekey's own table.
    const workflowId = firstReleaseRotationWorkflowId('v1', 'v9');
    const old = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: fixture.taskQueue,
      workflowBundle: await workflowBundleOf(LEGACY_BUILD),
      activities: fixture.activities(),
    });
    await old.runUntil(async () => {
      const handle = await env.client.workflow.start(rotateKek, {
        taskQueue: fixture.taskQueue,
        workflowId,
        args: [{ from: 'v1', to: 'v9', gracePeriod: '7d' }],
      });
      await expect(resultWithin(handle, 60_000)).rejects.toThrow('Workflow execution failed');
    });

    // The upgrade: this build's worker, which replays the closed run to answer its queries.
    const current = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: fixture.taskQueue,
      workflowBundle: workflowBundle(),
      activities: fixture.activities(),
    });
    const { query, details } = await current.runUntil(async () => {
      const line = documentedLine(
        'docs/04-rotate-watch-pause-confirm.md',
        'temporal workflow query  --workflow-id "$WF" --name progress',
      );
      const servers = { temporalAddress: env.address };
      const result = await runLine(asTyped(line, {}, servers), { ...operatorEnv(servers), WF: workflowId }, 30_000);
      expect({ line, code: result.code, stderr: result.stderr }).toEqual({ line, code: 0, stderr: '' });
      const metadata = await env.client.workflow
        .getHandle(workflowId)
        .query<{ currentDetails?: string }>('__temporal_workflow_metadata');
      return {
        query: JSON.parse(result.stdout.slice(result.stdout.search(/[[{]/))) as Record<string, unknown>,
        details: metadata.currentDetails ?? '',
      };
    });
    expect(query).toMatchObject({
      outcome: 'failed',
      phase: 'validate',
      failure: { type: 'InvalidRotationError', kind: 'invalid', error: 'bad_request' },
    });
    const message = (query.failure as { message: string }).message;
    expect(message).toContain('v9');
    expect(details.split('\n\n').slice(0, 2)).toEqual([`**Failed:** ${message}`, '**Error:** `bad_request` (invalid)']);

    // rekey status names it as the operators of that build did (`from:to`), with no worker now: from the close event.
    const cli = await runRekey(['--address', env.address, '--json', 'status', 'v1:v9'], {
      PATH: process.env.PATH,
      DATABASE_URL: fixture.db.url,
      ...fixture.keyEnv,
    });
    expect(cli.stdout, cli.stderr).not.toBe('');
    const status = JSON.parse(cli.stdout) as Record<string, unknown> & { run: { state: string } };
    expect(status).toMatchObject({ status: 'FAILED', failure: message, failureType: 'InvalidRotationError' });
    expect(status).toMatchObject({ failureKind: 'invalid', error: 'bad_request', run: { state: 'failed' } });
    expect({ code: cli.code, error: (JSON.parse(cli.stderr) as { error: string }).error }).toEqual({
      code: 2,
      error: 'bad_request',
    });

    const targets = new TargetRuntimes({
      db: fixture.db.pool,
      keys: fixture.keys,
      config: loadTargetsConfig({}),
      env: fixture.keyEnv,
    });
    const api = await buildAdminServer({
      client: env.client,
      targets,
      defaultTarget: BUILTIN_TARGET,
      taskQueue: fixture.taskQueue,
      token: 'legacy-failed-token',
      configuredCurrentKekId: () => undefined,
    });
    try {
      const answer = await api.inject({
        method: 'GET',
        url: `/admin/v1/secrets/rotation-status/${encodeURIComponent(workflowId)}`,
        headers: { authorization: 'Bearer legacy-failed-token' },
      });
      expect(answer.statusCode).toBe(200);
      expect(answer.json()).toMatchObject({
        status: 'failed',
        failure: message,
        error: 'bad_request',
        error_kind: 'invalid',
        error_type: 'InvalidRotationError',
      });
    } finally {
      await api.close();
      await targets.close();
    }
  });
});
