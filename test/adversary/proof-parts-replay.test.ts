// Adversary of the fold of verify's check loop (checkLabelled) and the retire and destroy proofs (proveInParts) into
// one runner: a rotation lives for days, so a build's worker must replay what the build before it wrote, run by run
// across continue-as-new, or the run stops in the middle of the steps that retire and destroy a KEK. The recorded
// histories in test/workflows/histories/ hold no proof of the rows labelled `from` in parts and no destruction at all,
// so the replay test cannot see a fold that changes those commands. Here the build before (main at 34ce2b8, bundled
// from the repository's history: test/helpers/old-build.ts) runs a Mycelium rotation whose verify check, whose proof
// before the operator's confirmation and whose proof before retire each run in many parts and continue as new in the
// middle, then its KEK's destruction; every run's history is then replayed on this build. Against PostgreSQL and the
// time-skipping server, rows written with the fixture's own crypto (test/helpers/mycelium.ts).
import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { KekRegistry } from '../../src/store/kek-registry';
import { confirmStepSignal, setGraceSignal } from '../../src/workflows';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { destroyIdIn, keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, kekOf, seedMyceliumTenants } from '../helpers/mycelium';
import { workflowBundleOf } from '../helpers/old-build';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

/** main before proofs5: checkLabelled and proveInParts each with a loop of their own. */
const BUILD_BEFORE = '34ce2b88168871b03b508f8cd73f46efb594ffce';

/** Every run of a workflow's chain, from the first: its run id and history. */
async function chain(client: Client, workflowId: string) {
  const runs: {
    runId: string | undefined;
    history: Awaited<ReturnType<ReturnType<Client['workflow']['getHandle']>['fetchHistory']>>;
  }[] = [];
  let runId: string | undefined;
  do {
    const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    runs.unshift({ runId, history });
    runId = history.events?.[0]?.workflowExecutionStartedEventAttributes?.continuedExecutionRunId || undefined;
  } while (runId !== undefined);
  return runs;
}

/** The activity types a history scheduled, each with how many times. */
function scheduled(history: {
  events?:
    { activityTaskScheduledEventAttributes?: { activityType?: { name?: string | null } | null } | null }[] | null;
}) {
  const counts: Record<string, number> = {};
  for (const event of history.events ?? []) {
    const name = event.activityTaskScheduledEventAttributes?.activityType?.name;
    if (name) counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

describe('adversary: a rotation and a destruction written by the build before the fold of the proof loops', () => {
  const server = useTimeSkippingEnv();
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
  });

  it("replay on this build run by run: a Mycelium rotation whose verify check and proofs of the rows labelled '1' ran in many parts across continue-as-new, and the destruction of generation 1", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    databases.push(db);
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    const keys = createTestKeys(['x']).provider;
    const activities = createActivities({
      db: db.pool,
      keys,
      env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
    });
    await seedMyceliumTenants(db.pool, 400, kekOf(gen1), 1);
    const taskQueue = `proof-parts-replay-${randomUUID()}`;
    const before = await Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: await workflowBundleOf(BUILD_BEFORE),
      activities,
    });
    const { workflowId, destroyId } = await before.runUntil(async () => {
      const { handle } = await startRotation(
        server.env.client,
        {
          target: 'mycelium',
          from: '1',
          to: '2',
          gracePeriod: '1h',
          // A window the database's clock ends at once (the time-skipping server does not move it).
          restoreWindow: '1s',
          allowShortRestoreWindow: 'a test of replay, on a scratch database',
          // One row per batch and the smallest time budget: every check and proof takes many parts, and the history
          // passes its bound in the middle of them.
          batchSize: 1,
          sliceTimeBudget: '100ms',
          maxHistoryEvents: 40,
        },
        { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
      );
      await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 120_000 });
      // Gateways on generation 2 provision DEKs lazily, labelled 1 (Mycelium's trap): the proof before the operator's
      // confirmation moves them.
      await seedMyceliumTenants(db.pool, 60, kekOf(gen2), 1);
      await handle.signal(setGraceSignal, { endNow: true });
      await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 180_000 });
      // And more while the operator removes generation 1: the proof before retire moves these.
      await seedMyceliumTenants(db.pool, 60, kekOf(gen2), 1);
      await handle.signal(confirmStepSignal, { step: 'retire', note: 'generation 1 removed' });
      const latest = server.env.client.workflow.getHandle(handle.workflowId);
      await resultWithin(latest, 180_000);
      const destroyId = await destroyIdIn(db.pool, '1', 'mycelium');
      await resultWithin(server.env.client.workflow.getHandle(destroyId), 120_000);
      return { workflowId: handle.workflowId, destroyId };
    });
    expect((await new KekRegistry(db.pool, 'mycelium').require('1')).state).toBe('destroyed');

    const rotation = await chain(server.env.client, workflowId);
    const destruction = await chain(server.env.client, destroyId);
    // What the build before wrote: the check and both proofs in parts, a chain of runs, a destruction that proved too.
    const all = [...rotation, ...destruction].map((run) => scheduled(run.history));
    const total = (name: string) => all.reduce((sum, counts) => sum + (counts[name] ?? 0), 0);
    const seen = JSON.stringify(all);
    expect(rotation.length, seen).toBeGreaterThan(2);
    expect(total('checkLabelled'), seen).toBeGreaterThanOrEqual(2);
    expect(total('proveLabels'), seen).toBeGreaterThanOrEqual(3);
    expect(scheduled(destruction.at(-1)!.history).destroyKek).toBe(1);

    const bundle = workflowBundle();
    for (const [name, runs] of [
      ['rotation', rotation],
      ['destruction', destruction],
    ] as const) {
      for (const [i, run] of runs.entries()) {
        // Throws DeterminismViolationError (or any workflow task failure) where this build diverges from the recording.
        await Worker.runReplayHistory({ workflowBundle: bundle }, run.history, `${name}-run-${i + 1}`);
      }
    }
    keys.close();
  }, 600_000);
});
