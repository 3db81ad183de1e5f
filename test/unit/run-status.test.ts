import { describe, expect, it } from 'vitest';
import { emptyCounters } from '../../src/rewrap/counters';
import { emptyFieldCounters } from '../../src/rewrap/field-counters';
import { enterPhase, initialProgress, report, type RotationProgress } from '../../src/rotation/progress';
import {
  graceCountdown,
  migrationRunStatus,
  retryingSteps,
  rotationRunStatus,
  type RunStatus,
} from '../../src/rotation/run-status';
import type { MigrationReport } from '../../src/workflows/migrate-dek';

const t0 = Date.UTC(2026, 11, 1);

function rotation(changes: Partial<RotationProgress> = {}): RotationProgress {
  return { ...initialProgress('v1', 'v2', false, t0, 'talos'), noun: 'secret', ...changes };
}

function rewrapped(progress: RotationProgress, rows: number, stale: number): RotationProgress {
  const inRewrap = enterPhase(progress, 'rewrap', t0);
  return { ...inRewrap, staleAtStart: stale, passes: 1, counters: { ...emptyCounters(), rewrapped: rows } };
}

const ended = (progress: RotationProgress, outcome: RotationProgress['outcome'], note?: string) => ({
  ...enterPhase(progress, 'done', t0),
  outcome,
  ...(note !== undefined && { note }),
});

const pick = (s: RunStatus) => ({ state: s.state, line: s.line, percent: s.percent, ended: s.ended });

describe('one status for a rotation, from what is known of it', () => {
  it('an aborted run reads Aborted with its reason and the rows it moved: 0%, not 100%, when it moved none', () => {
    const early = ended(
      enterPhase(rotation(), 'promote', t0),
      'aborted',
      "aborted: fleet not ready; both 'v1' and 'v2' still unwrap, nothing was retired",
    );
    expect(pick(rotationRunStatus({ execution: 'COMPLETED', progress: report(early, t0) }, t0))).toEqual({
      state: 'aborted',
      line: "Aborted: fleet not ready; both 'v1' and 'v2' still unwrap, nothing was retired; no secret moved",
      percent: 0,
      ended: true,
    });
    const midway = ended(rewrapped(rotation(), 250, 1_000), 'aborted', 'aborted');
    const status = rotationRunStatus({ execution: 'COMPLETED', progress: midway }, t0);
    expect(pick(status)).toEqual({
      state: 'aborted',
      line: 'Aborted: no reason given; 250 of 1,000 secrets moved',
      percent: 25,
      ended: true,
    });
    expect(status.step).toBe('rewrap');
    const unexplained = ended(rotation(), 'aborted', "aborted; both 'v1' and 'v2' still unwrap, nothing was retired");
    expect(rotationRunStatus({ execution: 'COMPLETED', progress: unexplained }, t0).line).toBe(
      "Aborted: no reason given; both 'v1' and 'v2' still unwrap, nothing was retired; no secret moved",
    );
  });

  it('each way a run ends has its own words: Succeeded, Nothing to do, Dry run done, Canary done, Failed', () => {
    const done = ended(rewrapped(rotation(), 1_000, 1_000), 'completed');
    expect(pick(rotationRunStatus({ execution: 'COMPLETED', progress: done }, t0))).toEqual({
      state: 'succeeded',
      line: "Succeeded: 'v1' → 'v2': 1,000 of 1,000 secrets moved, verified; 'v1' retired",
      percent: 100,
      ended: true,
    });
    const nothing = ended(rotation(), 'nothing-to-do', "nothing to do: already done: 'v1' is retired");
    expect(rotationRunStatus({ execution: 'COMPLETED', progress: nothing }, t0).line).toBe(
      "Nothing to do: already done: 'v1' is retired",
    );
    const dry = ended({ ...rewrapped(rotation(), 990, 1_000), dryRun: true }, 'dry-run');
    expect(rotationRunStatus({ execution: 'COMPLETED', progress: dry }, t0).line).toBe(
      "Dry run done: 'v1' → 'v2': 990 of 1,000 secrets would move, 0 unreadable; nothing was written",
    );
    const canary = ended(rewrapped(rotation(), 1, 1), 'canary');
    expect(rotationRunStatus({ execution: 'COMPLETED', progress: canary }, t0).line).toBe(
      "Canary done: 'v1' → 'v2': the canary secret is under 'v2' and verified; 'v2' is not promoted",
    );
    expect(pick(rotationRunStatus({ execution: 'FAILED', failure: 'verify: 3 of 200 sampled rows…' }, t0))).toEqual({
      state: 'failed',
      line: 'Failed: verify: 3 of 200 sampled rows…',
      percent: 0,
      ended: true,
    });
    expect(rotationRunStatus({ execution: 'TERMINATED', failure: 'Workflow execution terminated' }, t0).line).toBe(
      'Failed: terminated in Temporal (Workflow execution terminated): it took no further step; check the KEKs with rekey kek-status',
    );
  });

  it('a running run says what it waits for (the fleet, the application, a confirmation), with the command that moves it on', () => {
    const wait = {
      step: 'promote' as const,
      instructions: "every live instance must hold 'v2' (waiting for gw-3)",
      command: 'rekey override-fleet kek-rotation-talos --reason "…"',
      since: t0,
    };
    const fleet = rotationRunStatus(
      { execution: 'RUNNING', progress: rotation({ phase: 'promote', waiting: { ...wait, kind: 'fleet' } }) },
      t0,
    );
    expect(fleet).toMatchObject({
      state: 'waiting',
      label: 'Waiting for the fleet',
      line: "Waiting for the fleet: every live instance must hold 'v2' (waiting for gw-3)",
      command: 'rekey override-fleet kek-rotation-talos --reason "…"',
      ended: false,
    });
    const application = rotation({
      phase: 'retire',
      waiting: {
        ...wait,
        kind: 'application',
        instructions: "remove TALOS_KEK_v1 from every gateway's environment and restart it",
        command: 'rekey confirm kek-rotation-talos --step retire --note "…"',
      },
    });
    // Finding: Talos's and Mycelium's instructions ended "; then confirm", naming no command; the line every surface
    // prints now ends with the exact one.
    expect(rotationRunStatus({ execution: 'RUNNING', progress: application }, t0)).toMatchObject({
      label: 'Waiting for the application',
      line: `Waiting for the application: remove TALOS_KEK_v1 from every gateway's environment and restart it; then rekey confirm kek-rotation-talos --step retire --note "…"`,
      command: 'rekey confirm kek-rotation-talos --step retire --note "…"',
    });
    const confirmation = rotation({
      phase: 'retire',
      waiting: { ...wait, kind: 'application', instructions: 'x', confirmationOnly: true },
    });
    expect(rotationRunStatus({ execution: 'RUNNING', progress: confirmation }, t0).label).toBe(
      'Waiting for confirmation',
    );
  });

  it('a paused run says what it holds before; a running one its phase, pass and rows', () => {
    const paused = rotation({ phase: 'promote', paused: true, pausedSince: t0, heldBefore: 'promote' });
    expect(rotationRunStatus({ execution: 'RUNNING', progress: paused }, t0).line).toBe(
      'Paused: holds before promote (promote, 0%); rekey resume to go on',
    );
    expect(rotationRunStatus({ execution: 'RUNNING', progress: rewrapped(rotation(), 412, 1_000) }, t0).line).toBe(
      'Running: rewrap, pass 1, 41.2% (412 of 1,000 secrets moved)',
    );
  });

  it('a step that keeps failing shows as Retrying, with the step, its attempt and its last error, before anything else', () => {
    const waiting = rotation({
      phase: 'retire',
      waiting: { kind: 'application', step: 'retire', instructions: 'remove v1', since: t0 },
    });
    const status = rotationRunStatus(
      {
        execution: 'RUNNING',
        progress: waiting,
        retrying: [
          { activity: 'fleetReadiness', attempt: 2, lastError: 'connection refused' },
          {
            activity: 'applicationEvidence',
            attempt: 5,
            lastError: 'column t.updated_at does not exist',
            nextAttemptAt: t0 + 16_000,
          },
        ],
      },
      t0,
    );
    expect(status).toMatchObject({
      state: 'retrying',
      line: 'Retrying: retire (applicationEvidence) failed 4 time(s), attempt 5: column t.updated_at does not exist; next attempt in 16s',
      retrying: { step: 'retire', activity: 'applicationEvidence', attempt: 5 },
    });
    // A first attempt is not a retry.
    expect(
      rotationRunStatus({ execution: 'RUNNING', progress: waiting, retrying: [{ activity: 'x', attempt: 1 }] }, t0)
        .state,
    ).toBe('waiting');
  });

  it('the grace countdown is counted from the moment of display, not from the last progress report', () => {
    const graceEndsAt = t0 + 180_000;
    const inGrace = report(enterPhase(rotation({ graceEndsAt }), 'grace', t0), t0);
    const first = rotationRunStatus({ execution: 'RUNNING', progress: inGrace }, t0 + 26_000);
    const later = rotationRunStatus({ execution: 'RUNNING', progress: inGrace }, t0 + 60_000);
    expect(first.grace).toEqual({ endsAt: '2026-12-01T00:03:00.000Z', remainingSeconds: 154, remaining: '2m 34s' });
    expect(later.grace).toEqual({ endsAt: '2026-12-01T00:03:00.000Z', remainingSeconds: 120, remaining: '2m 0s' });
    expect(first.line).toBe("Running: grace, 'v1' retires at 2026-12-01T00:03:00.000Z (in 2m 34s)");
    expect(graceCountdown(graceEndsAt, graceEndsAt + 5_000)).toMatchObject({ remainingSeconds: 0, remaining: '0ms' });
  });
});

describe('one status for a migration, in the same words', () => {
  const migration = (changes: Partial<MigrationReport>): MigrationReport => ({
    target: 'mycelium',
    dryRun: false,
    phase: 'migrating',
    paused: false,
    passes: 1,
    fields: [
      {
        name: 'totp',
        group: 'TOTP',
        where: 'user.totp_secret',
        legacyAtStart: 40,
        counters: emptyFieldCounters(),
      },
    ],
    totals: emptyFieldCounters(),
    failures: [],
    ...changes,
  });

  it('aborted before it moved a value: Aborted at 0%; a finished one: Succeeded with its counts', () => {
    const aborted = migration({ phase: 'done', outcome: 'aborted', abortReason: 'admin API' });
    expect(pick(migrationRunStatus({ execution: 'COMPLETED', report: aborted }, t0))).toEqual({
      state: 'aborted',
      line: 'Aborted: admin API; 0 of 40 values moved',
      percent: 0,
      ended: true,
    });
    const done = migration({
      phase: 'done',
      outcome: 'completed',
      legacyLeft: 0,
      totals: { ...emptyFieldCounters(), migrated: 40, deksProvisioned: 2 },
    });
    expect(pick(migrationRunStatus({ execution: 'COMPLETED', report: done }, t0))).toEqual({
      state: 'succeeded',
      line: "Succeeded: 40 of 40 values moved under the tenants' DEKs; 2 DEK(s) provisioned",
      percent: 100,
      ended: true,
    });
    const paused = migration({ paused: true, totals: { ...emptyFieldCounters(), migrated: 10 } });
    expect(migrationRunStatus({ execution: 'RUNNING', report: paused }, t0).line).toBe(
      'Paused: holds before the next batch (25%); rekey resume to go on',
    );
  });
});

describe('the retrying steps of a running workflow, from its pending activities', () => {
  it('keeps only activities past their first attempt, with their last error and when they try next', () => {
    expect(
      retryingSteps([
        { activityType: { name: 'rewrapSlice' }, attempt: 1 },
        {
          activityType: { name: 'promoteKek' },
          attempt: 3,
          lastFailure: { message: 'the registry refuses' },
          // int64 seconds arrive as a Long.
          nextAttemptScheduleTime: { seconds: { toNumber: () => 1_800_000_000 }, nanos: 500_000_000 },
        },
      ]),
    ).toEqual([
      {
        activity: 'promoteKek',
        attempt: 3,
        lastError: 'the registry refuses',
        nextAttemptAt: 1_800_000_000_500,
      },
    ]);
    expect(retryingSteps(undefined)).toEqual([]);
  });
});
