// A rotation paused in the middle of a rewrap pass waits in the slice scheduler (src/workflows/slice-scheduler.ts), not
// in the waits that honour the history bound since HISTORY_BOUND_PATCH (grace, the gates, a hold between steps): a run
// paused there for days, sent signals meanwhile, grew by every one of them; so did a migration, whose every pause
// waits there (or between passes). Against the dev server and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startMigration } from '../../src/client/migrations';
import { startRotation } from '../../src/client/rotations';
import {
  overrideFleetGateSignal,
  pauseSignal,
  resumeSignal,
  type MigrationReport,
  type RotationReport,
} from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, kekOf, myceliumShape, seedLegacyInventory } from '../helpers/mycelium';
import { RotationFixture, SLOW_ROTATION } from '../helpers/rotation-fixture';
import {
  chainLengths,
  createDevServerEnv,
  HISTORY_OVERSHOOT,
  progressUntil,
  resultWithin,
  type OwnServerEnvironment,
  workflowBundle,
} from '../helpers/temporal';

/**
 * The bound of this run: above what the first run holds when the pause reaches it, in its first rewrap parts (with the
 * bound of the other history-bound tests, 60, a run is near its bound at any moment of a pass, and the part the pause
 * hands back sends it on as new before its paused wait begins).
 */
const BOUND = 200;
/** Rounds of two signals and a query sent to the paused run: without the bound they add 240 events or more to it. */
const ROUNDS = 30;

describe('a rotation paused mid-pass keeps its history within maxHistoryEvents (dev server)', () => {
  let env: OwnServerEnvironment;
  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('Finding (the slice scheduler’s paused wait ignored the history bound): a rotation paused in the middle of a rewrap pass, sent dozens of signals and queries, continues as new within the bound while paused, and once resumed moves every row exactly once and completes', async () => {
    const fixture = await RotationFixture.create({ tenants: 2_000 });
    try {
      const worker = await fixture.worker(env);
      const { report, lengths, pausedRuns } = await worker.runUntil(async () => {
        const { handle } = await startRotation(
          env.client,
          { ...SLOW_ROTATION, maxHistoryEvents: BOUND },
          { taskQueue: fixture.taskQueue, keyspace: await keyspaceIn(fixture.db.pool) },
        );
        // Paused in its first parts, in the run that began the pass (the first run, far from its bound).
        await progressUntil(handle, (p) => p.phase === 'rewrap' && p.counters.rewrapped > 0, { withinMs: 60_000 });
        await handle.signal(pauseSignal);
        // Held in the pass, by the slice scheduler (not before the next step, a wait bounded already).
        const held = await progressUntil(handle, (p) => p.paused && p.heldBefore !== undefined, { withinMs: 60_000 });
        expect(held.heldBefore).toMatch(/^the next rewrap batch \(pass 1\)$/);
        const runsBefore = (await chainLengths(env.client, handle.workflowId)).length;
        for (let i = 0; i < ROUNDS; i++) {
          // Two signals the paused run takes in and changes nothing for (it is paused; no gate waits for the fleet).
          await handle.signal(pauseSignal);
          await handle.signal(overrideFleetGateSignal, 'nothing waits for the fleet');
          // A query adds no event; asked as every wait asks (an unanswered poll is cancelled and asked again).
          const now = await progressUntil(handle, () => true, { withinMs: 60_000 });
          expect(now).toMatchObject({ paused: true, phase: 'rewrap' });
        }
        const pausedRuns = (await chainLengths(env.client, handle.workflowId)).length - runsBefore;
        await handle.signal(resumeSignal);
        const done = await resultWithin<RotationReport>(env.client.workflow.getHandle(handle.workflowId), 120_000);
        return { report: done, lengths: await chainLengths(env.client, handle.workflowId), pausedRuns };
      });
      expect(report.outcome).toBe('completed');
      // Every row moved once: counted once across the pause and every continue-as-new.
      expect(report.counters).toMatchObject({ rewrapped: 2_000, failed: 0 });
      expect(
        Math.max(...lengths),
        `history lengths of the runs, latest first: ${lengths.join(', ')}`,
      ).toBeLessThanOrEqual(BOUND + HISTORY_OVERSHOOT);
      expect(pausedRuns, 'runs the paused wait continued into').toBeGreaterThan(0);
      expect(await fixture.staleOn('v1')).toBe(0);
      expect(await fixture.kekState('v1')).toBe('retired');
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  }, 240_000);

  it('Finding (the slice scheduler’s paused wait ignored the history bound): a migration paused in the middle of a pass, sent dozens of signals and queries, continues as new within the bound while paused, and once resumed migrates every value exactly once and completes', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const tokenSecret = randomUUID();
    const taskQueue = `history-bound-migration-${randomUUID()}`;
    try {
      const seeded = await seedLegacyInventory(db.pool, kekOf(tokenSecret), { tenants: 30, users: 20 });
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: { MYC_TOKEN_SECRET: tokenSecret } }),
      });
      const { report, lengths, pausedRuns } = await worker.runUntil(async () => {
        // One value per batch, one batch per part: many short parts, to pause in the first of them.
        const { handle } = await startMigration(
          env.client,
          {
            target: 'mycelium',
            kekVersion: '1',
            batchSize: 1,
            parallelism: 1,
            sliceTimeBudget: '1ms',
            maxHistoryEvents: BOUND,
          },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil<MigrationReport>(handle, (p) => p.totals.migrated >= 2, { withinMs: 60_000 });
        await handle.signal(pauseSignal);
        await progressUntil<MigrationReport>(handle, (p) => p.paused && p.partsRunning === 0, { withinMs: 60_000 });
        const runsBefore = (await chainLengths(env.client, handle.workflowId)).length;
        for (let i = 0; i < ROUNDS; i++) {
          await handle.signal(pauseSignal);
          await handle.signal(pauseSignal);
          // A query adds no event; asked as every wait asks (an unanswered poll is cancelled and asked again).
          const now = await progressUntil<MigrationReport>(handle, () => true, { withinMs: 60_000 });
          expect(now.paused).toBe(true);
        }
        const pausedRuns = (await chainLengths(env.client, handle.workflowId)).length - runsBefore;
        await handle.signal(resumeSignal);
        const done = await resultWithin<MigrationReport>(env.client.workflow.getHandle(handle.workflowId), 120_000);
        return { report: done, lengths: await chainLengths(env.client, handle.workflowId), pausedRuns };
      });
      expect(report.outcome).toBe('completed');
      // Every value migrated once: counted once across the pause and every continue-as-new.
      expect(report.totals).toMatchObject({ migrated: seeded.values.length, casConflicts: 0 });
      expect(report.legacyLeft).toBe(0);
      expect(
        Math.max(...lengths),
        `history lengths of the runs, latest first: ${lengths.join(', ')}`,
      ).toBeLessThanOrEqual(BOUND + HISTORY_OVERSHOOT);
      expect(pausedRuns, 'runs the paused wait continued into').toBeGreaterThan(0);
    } finally {
      await db.drop();
    }
  }, 240_000);
});
