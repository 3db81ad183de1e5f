import { randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { KekRegistry } from '../../src/store/kek-registry';
import {
  confirmStepSignal,
  confirmStepUpdate,
  overrideFleetGateSignal,
  pauseSignal,
  resumeSignal,
  resumeUpdate,
  setGraceSignal,
  setGraceUpdate,
  type RotationReport,
} from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { checkWithOneKek, createMyceliumSchema, kekOf, seedMyceliumTenants } from '../helpers/mycelium';
import { keyspaceIn } from '../helpers/keyspace';
import {
  chainLengths,
  createDevServerEnv,
  HISTORY_OVERSHOOT,
  TEST_HISTORY_BOUND,
  progressUntil,
  resultWithin,
  type OwnServerEnvironment,
  workflowBundle,
} from '../helpers/temporal';

const BOUND = TEST_HISTORY_BOUND;
const OVERSHOOT = HISTORY_OVERSHOOT;

/**
 * A Mycelium rotation with a bound of 60 events, sent dozens of messages while in grace and while it waits for the
 * operator's retire confirmation: with `updates`, half of them updates, else all signals.
 */
async function waitThroughMessages(env: TestWorkflowEnvironment, updates: boolean): Promise<void> {
  const [gen1, gen2] = [randomUUID(), randomUUID()];
  const keysEnv = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };
  const { db } = await createApplicationDatabase(createMyceliumSchema);
  const taskQueue = `history-bound-${randomUUID()}`;
  try {
    const tenants = await seedMyceliumTenants(db.pool, 20, kekOf(gen1), 1);
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: keysEnv }),
    });
    const { report, lengths } = await worker.runUntil(async () => {
      const { handle } = await startRotation(
        env.client,
        { target: 'mycelium', from: '1', to: '2', gracePeriod: '1d', maxHistoryEvents: BOUND },
        { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
      );
      const inGrace = await progressUntil(handle, (p) => p.phase === 'grace' && p.graceEndsAt !== undefined, {
        withinMs: 60_000,
      });
      // Grace: twelve extensions by signal and twelve more (by update where the server allows), each with a query and a signal the run ignores
      // (no fleet gate waits): each extension counts once, whichever run it reached.
      for (let i = 0; i < 12; i++) {
        await handle.signal(setGraceSignal, { extendBy: '1m' });
        if (updates) await handle.executeUpdate(setGraceUpdate, { args: [{ extendBy: '1m' }] });
        else await handle.signal(setGraceSignal, { extendBy: '1m' });
        await handle.signal(overrideFleetGateSignal, 'nothing waits for the fleet');
        // A query adds no event; asked as every wait asks (an unanswered poll is cancelled and asked again).
        await progressUntil(handle, () => true, { withinMs: 60_000 });
      }
      const extended = inGrace.graceEndsAt! + 24 * 60_000;
      await progressUntil(handle, (p) => p.graceEndsAt === extended, { withinMs: 30_000 });
      await handle.signal(setGraceSignal, { endNow: true });
      await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 90_000 });
      // The wait for the operator: pauses by signal, resumes (by update), ignored signals and queries.
      for (let i = 0; i < 15; i++) {
        await handle.signal(pauseSignal);
        await handle.signal(overrideFleetGateSignal, 'nothing waits for the fleet');
        if (updates) await handle.executeUpdate(resumeUpdate);
        else await handle.signal(resumeSignal);
        // A query adds no event; asked as every wait asks (an unanswered poll is cancelled and asked again).
        await progressUntil(handle, () => true, { withinMs: 60_000 });
      }
      const confirmation = { step: 'retire', note: 'old token_secret removed from the gateways' } as const;
      if (updates) await handle.executeUpdate(confirmStepUpdate, { args: [confirmation] });
      else await handle.signal(confirmStepSignal, confirmation);
      const done = await resultWithin<RotationReport>(env.client.workflow.getHandle(handle.workflowId), 90_000);
      return { report: done, lengths: await chainLengths(env.client, handle.workflowId) };
    });
    expect(report.outcome).toBe('completed');
    expect(report.counters).toMatchObject({ rewrapped: 20, failed: 0 });
    // The waits continued as new, and no run grew past the bound by more than the task that saw it.
    expect(lengths.length).toBeGreaterThan(2);
    expect(
      Math.max(...lengths),
      `history lengths of the runs, latest first: ${lengths.join(', ')}`,
    ).toBeLessThanOrEqual(BOUND + OVERSHOOT);
    expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'retired' });
    expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, tenants)).toEqual([]);
  } finally {
    await db.drop();
  }
}

describe('a rotation waiting for its operator keeps its history within maxHistoryEvents (dev server)', () => {
  // The dev server, whose frontend hands a message that reaches a run as it continues as new to the next run at once.
  // The time-skipping test server held such an update until the client's call timed out (over a minute), and once held
  // the signals-only run past four minutes under a loaded suite: delivered in the end, but too late for a test.
  let env: OwnServerEnvironment;
  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it(
    'Finding (history past maxHistoryEvents while the run waits for the operator): through grace and the wait for the retire confirmation, dozens of signals and queries leave every run within the bound, no signal is lost across a continue-as-new, and the rotation completes',
    () => waitThroughMessages(env, false),
    240_000,
  );

  it(
    'Finding (history past maxHistoryEvents while the run waits for the operator): through grace and the wait for the retire confirmation, dozens of signals, updates and queries leave every run within the bound, no message is lost across a continue-as-new, and the rotation completes',
    () => waitThroughMessages(env, true),
    240_000,
  );
});
