import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDevServerEnv } from '../helpers/temporal';

const run = promisify(execFile);

describe('tctl built by the setup from its Go module source', () => {
  let env: TestWorkflowEnvironment;
  // tctl writes its settings to ~/.config/temporalio/tctl.yaml: a home of its own keeps the user's untouched.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-tctl-home-'));

  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
    fs.rmSync(home, { recursive: true, force: true });
  });

  const tctl = (...args: string[]) => {
    const environment: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: home };
    // A busy machine may take longer than tctl's default 5 s for an RPC.
    return run(inject('toolchain').tctl, ['--address', env.address, '--context_timeout', '30', ...args], {
      env: environment,
      timeout: 30_000,
    });
  };

  it('is tctl 1.18.0 and lists the dev server’s namespaces', async () => {
    expect((await tctl('--version')).stdout).toMatch(/^tctl version 1\.18\.0$/m);
    const { stdout } = await tctl('namespace', 'list');
    expect(stdout).toMatch(/^Name: default$/m);
  });

  it('describes a workflow the TypeScript SDK started, and terminates it', async () => {
    const workflowId = `tctl-probe-${randomUUID()}`;
    // No worker polls this queue: the workflow stays running until tctl ends it.
    const handle = await env.client.workflow.start('tctlProbe', { taskQueue: `tctl-${randomUUID()}`, workflowId });

    const described = await tctl('workflow', 'describe', '--workflow_id', workflowId);
    expect(described.stdout).toContain(`"workflowId": "${workflowId}"`);
    expect(described.stdout).toContain(`"runId": "${handle.firstExecutionRunId}"`);
    expect(described.stdout).toMatch(/"status": "Running"/);

    await tctl('workflow', 'terminate', '--workflow_id', workflowId, '--reason', 'tctl test');
    expect((await handle.describe()).status.name).toBe('TERMINATED');
  });
});
