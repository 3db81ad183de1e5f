// docs/04's plain `temporal` CLI lines, as an operator types them: read from the page's block, run in bash with the
// toolchain's `temporal` against a worker on the task queue the page names (`rekey`), the server named by
// TEMPORAL_ADDRESS and the run by WF, as the page sets it (test/helpers/as-typed.ts); the lines are not edited.
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedTenants } from '../../src/dev/tenants';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
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
import { asTyped, operatorEnv, runLine } from '../helpers/as-typed';

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

/** A shell line's first words (single-quoted words kept whole). */
const firstWords = (line: string, n: number) =>
  [...line.matchAll(/'([^']*)'|(\S+)/g)]
    .map((m) => m[1] ?? m[2]!)
    .slice(0, n)
    .join(' ');

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
    expect(lines.map((l) => firstWords(l, 3))).toEqual([
      'temporal workflow start',
      'temporal workflow query',
      'temporal workflow update',
      'temporal workflow signal',
      'temporal workflow update',
      'temporal workflow update',
      'temporal workflow list',
    ]);
    // The operator's shell: the server in TEMPORAL_ADDRESS, WF set as the page's first line sets it.
    const servers = { temporalAddress: env.address };
    const shell = { ...operatorEnv(servers), WF: workflowId };
    const outputs: string[] = [];
    for (const line of lines) {
      if (line.includes('overrideFleetGate')) {
        const handle = env.client.workflow.getHandle<typeof rotateKek>(workflowId);
        await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      }
      const result = await runLine(asTyped(line, {}, servers), shell, 30_000);
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
