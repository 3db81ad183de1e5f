import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { execFile } from 'node:child_process';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { seedTenants } from '../../src/dev/tenants';
import { AppInstances } from '../../src/store/app-instances';
import { KekRegistry } from '../../src/store/kek-registry';
import { createWorker } from '../../src/worker';
import { progressQuery, rotateKek } from '../../src/workflows';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { rotationIdIn } from '../helpers/keyspace';
import { docSection } from '../helpers/readme';
import { createDevServerEnv, progressUntil, workflowBundle } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

/** The `temporal …` lines of the guide's section on the plain temporal CLI (docs/04), continuation lines joined. */
function readmeTemporalLines(): string[] {
  const section = docSection(
    'docs/04-rotate-watch-pause-confirm.md',
    '## The same with the `temporal` CLI and the Web UI',
  );
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1] ?? '';
  return block
    .replace(/\\\n\s*/g, '')
    .split('\n')
    .map((line) => line.replace(/\s+#.*$/, '').trim())
    .filter((line) => line.startsWith('temporal '));
}

/** Splits a shell line into arguments (single quotes, and "$WF", the workflow id kek-status printed, as the README uses). */
function shellWords(line: string, workflowId: string): string[] {
  return [...line.replaceAll('"$WF"', workflowId).matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

describe("the README's plain temporal CLI lines work against a real worker", () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let worker: Worker;
  let running: Promise<void>;
  const { provider: keys } = createTestKeys(['v1', 'v2'], 'v1');

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 20_000 });
    // An instance that does not hold 'v2' yet: the run waits at the fleet gate, which the README's override lets go.
    await new AppInstances(db.pool, BUILTIN_TARGET).announce({
      instanceId: 'old-pod',
      unwrapKekIds: ['v1'],
      wrapKekId: 'v1',
      kekFingerprints: { v1: await fingerprintIn(keys, 'v1') },
    });
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue: 'rekey',
      db: db.pool,
      keys,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
  });
  afterAll(async () => {
    worker?.shutdown();
    await running;
    await db?.drop();
    await env?.teardown();
  });

  it('start, query, signal, update and list, each as written', async () => {
    const lines = readmeTemporalLines();
    // The README sets WF to the id `rekey kek-status` prints: the rotation's of this database's keyspace.
    const workflowId = await rotationIdIn(db.pool);
    expect(lines.map((l) => shellWords(l, workflowId).slice(0, 3).join(' '))).toEqual([
      'temporal workflow start',
      'temporal workflow query',
      'temporal workflow update',
      'temporal workflow signal',
      'temporal workflow update',
      'temporal workflow update',
      'temporal workflow list',
    ]);
    const outputs: string[] = [];
    for (const line of lines) {
      const [, ...args] = shellWords(line, workflowId);
      if (line.includes('overrideFleetGate')) {
        const handle = env.client.workflow.getHandle<typeof rotateKek>(workflowId);
        await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      }
      const result = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(
          inject('toolchain').temporalCli,
          [...args, '--address', env.address],
          { timeout: 30_000 },
          (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
        ),
      );
      expect({ line, code: result.code, stderr: result.stderr }).toEqual({ line, code: 0, stderr: '' });
      outputs.push(result.stdout);
    }
    expect(outputs[1]).toMatch(/"from":\s*"v1"/);
    expect(outputs[2]).toContain('fleet gate overridden: pods drained');
    expect(outputs[4]).toMatch(/"?paused"?:\s*true/);
    expect(outputs[5]).toMatch(/gracePeriod|graceEndsAt/);

    const progress = await env.client.workflow.getHandle<typeof rotateKek>(workflowId).query(progressQuery);
    expect(progress.paused).toBe(true);
    // Paused: the run holds before its next step, and says which.
    const held = await progressUntil(
      env.client.workflow.getHandle<typeof rotateKek>(workflowId),
      (p) => p.heldBefore !== undefined,
    );
    expect(held.heldBefore).toBeTruthy();
  });
});
