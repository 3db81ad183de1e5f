// The rotation's last step, recording its end in rekey's run history, with stub activities on the time-skipping
// server: what it records of a run that succeeds and of one that fails, and that a history it cannot write changes
// neither outcome. (The table itself, and the CLI and admin API reading it: test/surfaces/history.test.ts.)
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import type { RotationReport } from '../../src/workflows';
import { StubRotation } from '../helpers/stub-rotation';
import { resultWithin, useTimeSkippingEnv } from '../helpers/temporal';

describe("a run's end, recorded in the run history", () => {
  const server = useTimeSkippingEnv();

  it('a rotation that succeeds records Succeeded with from → to, its start and end, and the rows it moved', async () => {
    const stub = new StubRotation();
    stub.stalePerPass = [10];
    stub.slices = [{ counters: { rewrapped: 10 } }];
    const { report, firstRunId, workflowId, scheduled } = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { gracePeriod: '1s' });
      const report = await resultWithin<RotationReport>(handle);
      // The steps in the order the workflow scheduled them, from its history: the stub's own call log can also hold
      // an attempt the worker ran late (on a loaded machine, after the server had already retried it), so it does
      // not say which step the workflow took last.
      const { events } = await handle.fetchHistory();
      return {
        report,
        firstRunId: handle.firstExecutionRunId,
        workflowId: handle.workflowId,
        scheduled: (events ?? []).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []),
      };
    });
    expect(report.outcome).toBe('completed');
    expect(stub.recorded).toEqual([
      {
        workflowId,
        runId: firstRunId,
        target: 'rekey',
        kind: 'rotation',
        from: 'v1',
        to: 'v2',
        startedAt: report.phases.validate!.startedAt,
        endedAt: expect.any(Number) as unknown,
        state: 'succeeded',
        reason: "'v1' → 'v2': 10 of 10 rows moved, verified; 'v1' retired",
        rowsTotal: 10,
        rowsMoved: 10,
        rowsUnreadable: 0,
      },
    ]);
    expect(stub.recorded[0]!.endedAt).toBeGreaterThanOrEqual(stub.recorded[0]!.startedAt);
    expect(scheduled.at(-1)).toBe('recordRun');
    expect(scheduled.filter((name) => name === 'recordRun')).toHaveLength(1);
  });

  it('a rotation that fails records Failed with its error, and still fails with it', async () => {
    const stub = new StubRotation();
    stub.validateRefusal = ApplicationFailure.nonRetryable("no KEK 'v9' in the key store", 'UnknownKekError');
    const failure = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { to: 'v9' });
      return resultWithin(handle).then(
        () => undefined,
        (err: unknown) => err,
      );
    });
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    expect(((failure as WorkflowFailedError).cause as ApplicationFailure).message).toBe("no KEK 'v9' in the key store");
    expect(stub.recorded).toMatchObject([
      { kind: 'rotation', to: 'v9', state: 'failed', reason: "no KEK 'v9' in the key store", rowsMoved: 0 },
    ]);
  });

  it('a run whose history cannot be written ends as it would have: the record is tried, then given up', async () => {
    const stub = new StubRotation();
    stub.recordFails = new Error('the database refuses connections');
    const report = await stub.run(server.env, async () =>
      resultWithin<RotationReport>(await stub.start(server.env, { gracePeriod: '1s' }), 90_000),
    );
    expect(report.outcome).toBe('completed');
    expect(stub.count('recordRun')).toBe(10);
    expect(stub.recorded).toEqual([]);
  });
});
