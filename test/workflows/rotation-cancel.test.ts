import { Context } from '@temporalio/activity';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRotation } from '../../src/client/rotations';
import { emptyCounters } from '../../src/rewrap/counters';
import {
  abortSignal,
  abortUpdate,
  pauseUpdate,
  progressQuery,
  resumeSignal,
  resumeUpdate,
  rotateKek,
  type RotationReport,
} from '../../src/workflows';
import { RotationFixture, SLOW_ROTATION } from '../helpers/rotation-fixture';
import { sliceUntilCancelled, StubRotation } from '../helpers/stub-rotation';
import { createDevServerEnv, progressUntil, resultWithin, untilNoActivityPending } from '../helpers/temporal';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';

// Pause and abort cancel running slice activities. On the time-skipping test server a cancellation that races the
// activity's completion gets the workflow task rejected (ACTIVITY_UNKNOWN, temporalio/sdk-java#2391) and the run
// stuck; a real server accepts it. So these run on the dev server, in real time.
describe('pause and abort mid-rewrap, on the dev server', () => {
  let env: TestWorkflowEnvironment;
  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });

  const slow = SLOW_ROTATION;

  it('pause stops the rewrap at a batch boundary and holds it; resume finishes it', async () => {
    const fixture = await RotationFixture.create({ tenants: 6_000 });
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const handle = await env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [slow],
        });
        await progressUntil(handle, (p) => p.counters.rewrapped > 0);

        const paused = await handle.executeUpdate(pauseUpdate);
        expect(paused.paused).toBe(true);
        expect(paused.phase).toBe('rewrap');
        expect(paused.percent).toBeGreaterThan(0);
        expect(paused.percent).toBeLessThan(100);
        // Running slices stop at a batch boundary: the server holds no activity (their cancellation has completed).
        await untilNoActivityPending(handle);
        const staleWhilePaused = await fixture.staleOn('v1');
        const heldProgress = (await handle.query(progressQuery)).counters.rewrapped;
        // Then the workflow takes one more workflow task: it answers a second pause (which changes nothing). Every
        // activity's end is in its history before that task, so whatever it would do on them it has done by now.
        const later = await handle.executeUpdate(pauseUpdate);
        // Nothing moves, proven by what happened rather than by waiting: no activity was scheduled from the workflow
        // task that took the pause on, and without an activity nothing writes a row.
        const events = (await handle.fetchHistory()).events ?? [];
        const pauseTask = workflowTaskOfUpdate(events, 'pauseRotation');
        const scheduledSincePause = events
          .slice(pauseTask)
          .filter((e) => e.activityTaskScheduledEventAttributes)
          .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name);
        expect(scheduledSincePause).toEqual([]);
        expect(later.paused).toBe(true);
        expect(later.etaSeconds).toBeUndefined();
        expect(later.counters.rewrapped).toBe(heldProgress);
        expect(await fixture.staleOn('v1')).toBe(staleWhilePaused);
        expect(staleWhilePaused).toBeGreaterThan(0);

        await handle.signal(resumeSignal);
        const result = await resultWithin<RotationReport>(handle);
        expect(result.outcome).toBe('completed');
        expect(result.counters.rewrapped).toBe(6_000);
        // The pause is counted: at least from the workflow task that took it to the resume signal, by the server's clock.
        const history = (await handle.fetchHistory()).events ?? [];
        const pausedFrom = eventMs(history[workflowTaskOfUpdate(history, 'pauseRotation')]!);
        const resumedAt = eventMs(
          history.find((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'resume')!,
        );
        expect(resumedAt).toBeGreaterThan(pausedFrom);
        expect(result.pausedMs).toBeGreaterThanOrEqual(Math.floor(resumedAt) - Math.ceil(pausedFrom));
      });
      expect(await fixture.staleOn('v1')).toBe(0);
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });

  it('abort mid-rewrap ends without retiring, with both keys usable and data still readable; starting again finishes it', async () => {
    const fixture = await RotationFixture.create({ tenants: 6_000 });
    try {
      const worker = await fixture.worker(env);
      const keyspace = await keyspaceIn(fixture.db.pool);
      const result = await worker.runUntil(async () => {
        const started = await startRotation(env.client, slow, { taskQueue: fixture.taskQueue, keyspace });
        await progressUntil(started.handle, (p) => p.counters.rewrapped > 0);
        await started.handle.signal(abortSignal, 'change freeze');
        return resultWithin<RotationReport>(started.handle);
      });
      expect(result.outcome).toBe('aborted');
      expect(result.note).toBe("aborted: change freeze; both 'v1' and 'v2' still unwrap, nothing was retired");
      expect(result.counters.rewrapped).toBeGreaterThan(0);
      expect(result.counters.rewrapped).toBeLessThan(6_000);
      expect(await fixture.staleOn('v1')).toBe(6_000 - result.counters.rewrapped);
      expect(await fixture.kekState('v1')).toBe('decrypt_only');
      expect(await fixture.kekState('v2')).toBe('active');
      await fixture.expectNothingLost();

      const again = await fixture.worker(env);
      const finished = await again.runUntil(async () => {
        const restarted = await startRotation(
          env.client,
          { ...slow, sliceTimeBudget: '30s' },
          { taskQueue: fixture.taskQueue, keyspace },
        );
        expect(restarted.kind).toBe('started');
        return resultWithin<RotationReport>(restarted.handle);
      });
      expect(finished.outcome).toBe('completed');
      expect(finished.counters.rewrapped).toBe(6_000 - result.counters.rewrapped);
      expect(await fixture.kekState('v1')).toBe('retired');
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });

  it('Finding 7: a slice that fails while the rotation is paused goes back in the queue and finishes on resume', async () => {
    const stub = new StubRotation();
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    // The first part fails as a database error would when it races the pause: not as a cancellation.
    stub.slices = [
      {
        run: sliceUntilCancelled(
          () => new Error('connection terminated unexpectedly'),
          () => started(),
        ),
      },
      { counters: { rewrapped: 10 } },
    ];
    const result = await stub.run(env, async () => {
      const handle = await stub.start(env, { gracePeriod: '1s' });
      await running;
      await handle.executeUpdate(pauseUpdate);
      await progressUntil(handle, (p) => p.heldBefore?.startsWith('the next rewrap batch') === true);
      expect(stub.count('rewrapSlice')).toBe(1);
      await handle.executeUpdate(resumeUpdate);
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('completed');
    expect(stub.count('rewrapSlice')).toBe(2);
    expect(result.counters.rewrapped).toBe(10);
  });

  it('a slice that committed batches before it saw the abort returns them, and the aborted report counts them', async () => {
    const stub = new StubRotation();
    stub.stalePerPass = [100];
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    stub.slices = [
      {
        // As rewrapSlice does: it stops at a batch boundary and answers with what it committed (40 of 100 rows).
        run: async () => {
          const context = Context.current();
          started();
          for (;;) {
            context.heartbeat();
            if (context.cancellationSignal.aborted) {
              return {
                counters: { ...emptyCounters(), rewrapped: 40 },
                cursor: 'tenant-40',
                done: false,
                failures: [],
                contendedTenants: [],
              };
            }
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
        },
      },
    ];
    const result = await stub.run(env, async () => {
      const handle = await stub.start(env, { gracePeriod: '1s' });
      await running;
      await handle.executeUpdate(abortUpdate, { args: ['change freeze'] });
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('aborted');
    expect(result.counters.rewrapped).toBe(40);
  });

  it('Finding 11: the first slice that fails for good stops its siblings before the run fails', async () => {
    const stub = new StubRotation();
    let siblingStopped: number | undefined;
    let siblingStarted!: () => void;
    const sibling = new Promise<void>((resolve) => (siblingStarted = resolve));
    stub.stalePerPass = [20];
    stub.ranges = 2;
    stub.slices = [
      {
        run: async () => {
          await sibling;
          throw ApplicationFailure.nonRetryable("KEK 'v2' is retired, and may not wrap", 'KekNotWritableError');
        },
      },
      {
        run: sliceUntilCancelled(
          () => {
            siblingStopped = Date.now();
            return undefined;
          },
          () => siblingStarted(),
        ),
      },
    ];
    const failedAt = await stub.run(env, async () => {
      const handle = await stub.start(env, { parallelism: 2 });
      await expect(resultWithin(handle)).rejects.toThrow(WorkflowFailedError);
      return Date.now();
    });
    expect(siblingStopped).toBeDefined();
    expect(siblingStopped!).toBeLessThanOrEqual(failedAt);
  });
});

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** The index of the WorkflowTaskCompleted event of the workflow task that accepted the first update named `name`. */
function workflowTaskOfUpdate(events: HistoryEvent[], name: string): number {
  const accepted = events.findIndex(
    (e) => e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === name,
  );
  for (let i = accepted - 1; i >= 0; i--) if (events[i]!.workflowTaskCompletedEventAttributes) return i;
  throw new Error(`no workflow task accepted an update '${name}'`);
}

/** When the server recorded `event`, in ms since the epoch (fractional). */
function eventMs(event: HistoryEvent): number {
  return Number(event.eventTime?.seconds ?? 0) * 1000 + (event.eventTime?.nanos ?? 0) / 1e6;
}
