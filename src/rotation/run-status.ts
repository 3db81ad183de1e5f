// One status for a run, the same words on every surface: `rekey status`, `rotate --wait`, `schedule list`, `rekey
// history`, the admin API, the Web UI's current details and the metrics all say it through this module. It turns what
// is known of a run (Temporal's execution status, the run's own progress report or failure, a step that keeps failing
// and retrying) into one state with its reason. Pure (no I/O, no Node APIs): the workflow bundle uses it too.
import type { MigrationReport } from './migration-report';
import { formatDuration } from './durations';
import { describeTargetKek } from './rotation-input';
import { percentComplete, rowsMoved, type RotationProgress } from './progress';

/** Every state a run can be in, running or ended. */
export const RUN_STATES = [
  'running',
  'waiting',
  'paused',
  'retrying',
  'succeeded',
  'failed',
  'aborted',
  'nothing-to-do',
  'dry-run-done',
  'canary-done',
] as const;
export type RunState = (typeof RUN_STATES)[number];

/** The states of a run that has ended (it takes no further step). */
export const ENDED_STATES: readonly RunState[] = [
  'succeeded',
  'failed',
  'aborted',
  'nothing-to-do',
  'dry-run-done',
  'canary-done',
];

/** The states of an ended run that did what it was asked (Talos's `completed`; the CLI's exit 0). */
export const ENDED_WELL: readonly RunState[] = ['succeeded', 'nothing-to-do', 'dry-run-done', 'canary-done'];

const LABELS: Record<RunState, string> = {
  running: 'Running',
  waiting: 'Waiting',
  paused: 'Paused',
  retrying: 'Retrying',
  succeeded: 'Succeeded',
  failed: 'Failed',
  aborted: 'Aborted',
  'nothing-to-do': 'Nothing to do',
  'dry-run-done': 'Dry run done',
  'canary-done': 'Canary done',
};

/** The words of a state (a waiting run says what it waits for: see rotationRunStatus). */
export function labelOf(state: RunState): string {
  return LABELS[state];
}

/** A step that failed and is being retried by Temporal (an activity past its first attempt), from `describe()`. */
export interface RetryingStep {
  /** The activity, e.g. `promoteKek`, `applicationEvidence`. */
  activity: string;
  /** The attempt running or scheduled now: 2 is the first retry. */
  attempt: number;
  /** The last attempt's error, as the activity threw it. */
  lastError?: string;
  /** When the next attempt starts (epoch ms), if it waits for its backoff. */
  nextAttemptAt?: number;
}

/** A pending activity as `describe()` gives it (temporal.api.workflow.v1.PendingActivityInfo), the fields read here. */
export interface PendingActivity {
  activityType?: { name?: string | null } | null;
  attempt?: number | null;
  lastFailure?: { message?: string | null } | null;
  nextAttemptScheduleTime?: { seconds?: unknown; nanos?: number | null } | null;
}

/** The activities of a running workflow that failed and are retried (attempt > 1), with their last error. */
export function retryingSteps(pending: readonly PendingActivity[] | null | undefined): RetryingStep[] {
  const steps: RetryingStep[] = [];
  for (const activity of pending ?? []) {
    const attempt = activity.attempt ?? 1;
    if (attempt <= 1) continue;
    const next = activity.nextAttemptScheduleTime;
    const seconds = asNumber(next?.seconds);
    steps.push({
      activity: activity.activityType?.name ?? 'an activity',
      attempt,
      ...(activity.lastFailure?.message && { lastError: activity.lastFailure.message }),
      ...(seconds !== undefined &&
        seconds > 0 && { nextAttemptAt: seconds * 1000 + Math.floor((next?.nanos ?? 0) / 1e6) }),
    });
  }
  return steps;
}

/** A protobuf int64 (a number, or a Long with toNumber()), as a number. */
function asNumber(value: unknown): number | undefined {
  if (typeof value === 'number') return value;
  if (typeof value === 'string') return Number(value);
  if (value !== null && typeof value === 'object' && 'toNumber' in value && typeof value.toNumber === 'function') {
    return Number((value as { toNumber(): number }).toNumber());
  }
  return undefined;
}

/** What is known of a run, whoever asks. */
export interface RunFacts {
  /** Temporal's execution status of the chain's latest run: RUNNING, COMPLETED, FAILED, TERMINATED, CANCELED, ... */
  execution: string;
  /** The run's failure, as Temporal reports it (FAILED, TERMINATED, ...). */
  failure?: string;
  /** Steps that failed and are retried now (running runs). */
  retrying?: RetryingStep[];
  /** The phase the run was last in, as its RekeyPhase search attribute says (a failed run has no progress to read). */
  phase?: string;
}

/** The one status of a run. */
export interface RunStatus {
  state: RunState;
  /** The words, e.g. `Waiting for the fleet`, `Aborted`, `Dry run done`. */
  label: string;
  /** Why it is in this state, or what it does there, in plain words. */
  reason: string;
  /** `<label>: <reason>`, the line every surface prints. */
  line: string;
  /** The step it is at (a rotation's phase, a migration's), or the one it ended in. */
  step: string;
  ended: boolean;
  /** Rows moved over rows to move, 0..100: a run that moved nothing is at 0%, whatever phase it ended in. */
  percent: number;
  /** Rows (values, for a migration) moved, and how many there were to move when the run planned. */
  rows: { moved: number; total: number };
  /** In grace: when the old KEK retires, and how long from the moment this status was made. */
  grace?: { endsAt: string; remainingSeconds: number; remaining: string };
  /** The step that keeps failing, while it is retried. */
  retrying?: RetryingStep & { step: string };
  /** While waiting: the command that moves the run on. */
  command?: string;
}

const n = (value: number) => value.toLocaleString('en-US');

function make(
  state: RunState,
  reason: string,
  fields: Omit<RunStatus, 'state' | 'label' | 'reason' | 'line' | 'ended'>,
  label = LABELS[state],
): RunStatus {
  return {
    state,
    label,
    reason,
    line: reason ? `${label}: ${reason}` : label,
    ended: ENDED_STATES.includes(state),
    ...fields,
  };
}

/** The step that keeps failing, worded: `promoteKek, attempt 5: <error>; next attempt in 16s`. */
function retryingReason(step: string, retrying: RetryingStep, now: number): string {
  const next =
    retrying.nextAttemptAt !== undefined && retrying.nextAttemptAt > now
      ? `; next attempt in ${formatDuration(retrying.nextAttemptAt - now)}`
      : '';
  return `${step} (${retrying.activity}) failed ${retrying.attempt - 1} time(s), attempt ${retrying.attempt}: ${retrying.lastError ?? 'no error recorded'}${next}`;
}

/** The step that keeps failing the most, if any step is past its first attempt. */
function worstRetry(facts: RunFacts): RetryingStep | undefined {
  const retrying = (facts.retrying ?? []).filter((r) => r.attempt > 1);
  return retrying.sort((a, b) => b.attempt - a.attempt)[0];
}

/** A run that Temporal ended without the run's own code saying why (terminated, cancelled, timed out). */
function endedByTemporal(facts: RunFacts): string | undefined {
  switch (facts.execution) {
    case 'TERMINATED':
      return `terminated in Temporal${facts.failure ? ` (${facts.failure})` : ''}: it took no further step; check the KEKs with rekey kek-status`;
    case 'CANCELED':
    case 'CANCELLED':
      return 'cancelled in Temporal (not a rekey abort): it took no further step; check the KEKs with rekey kek-status';
    case 'TIMED_OUT':
      return 'timed out in Temporal: it took no further step; check the KEKs with rekey kek-status';
    default:
      return undefined;
  }
}

/**
 * The status of a run (a rotation or a migration) that failed, else undefined: ended by Temporal, failed to Temporal
 * (its failure read from the close event), ended with no report to read, or failed by its own report (it is recording
 * its end, still RUNNING to Temporal, or its report is all there is of it).
 */
function failedStatus(
  facts: RunFacts,
  report: { outcome?: string; failure?: { message: string } } | undefined,
  noun: 'run' | 'migration',
  base: Omit<RunStatus, 'state' | 'label' | 'reason' | 'line' | 'ended'>,
): RunStatus | undefined {
  const byTemporal = endedByTemporal(facts);
  if (byTemporal !== undefined) return make('failed', byTemporal, base);
  const unexplained = `the ${noun} failed; see its page in the Web UI`;
  if (facts.execution === 'FAILED' || (facts.execution !== 'RUNNING' && !report)) {
    return make('failed', facts.failure ?? unexplained, base);
  }
  if (report?.outcome === 'failed')
    return make('failed', facts.failure ?? report.failure?.message ?? unexplained, base);
  return undefined;
}

function rowsText(moved: number, total: number, noun: string, verb = 'moved'): string {
  return `${n(moved)} of ${n(total)} ${noun}s ${verb}`;
}

/** The grace period as seen now: its absolute end and a countdown from `now`, never from the last progress report. */
export function graceCountdown(graceEndsAt: number, now: number): NonNullable<RunStatus['grace']> {
  const remainingMs = Math.max(0, graceEndsAt - now);
  return {
    endsAt: new Date(graceEndsAt).toISOString(),
    remainingSeconds: Math.floor(remainingMs / 1000),
    remaining: formatDuration(remainingMs),
  };
}

/**
 * The status of a rotation from what is known of it: `progress` is its report (the `progress` query while it runs,
 * its result once it ended well or was aborted), `now` the moment the status is shown.
 */
export function rotationRunStatus(facts: RunFacts & { progress?: RotationProgress }, now: number): RunStatus {
  const { progress } = facts;
  const noun = progress?.noun === 'secret' ? 'secret' : 'row';
  const rows = { moved: progress ? rowsMoved(progress) : 0, total: progress?.staleAtStart ?? 0 };
  const base = {
    step: progress?.phase ?? facts.phase ?? 'validate',
    percent: progress ? percentComplete(progress) : 0,
    rows,
  };
  const kek = progress ? `'${progress.from}' → ${describeTargetKek(progress.to)}` : '';

  const failed = failedStatus(facts, progress, 'run', base);
  if (failed) return failed;
  if (!progress) return make('running', 'starting', base);

  if (facts.execution !== 'RUNNING' && progress.outcome === 'running') {
    return make('failed', `the run ended in ${progress.phase} without an outcome; see its page in the Web UI`, base);
  }
  if (progress.outcome !== 'running' && facts.execution !== 'RUNNING') {
    const note = progress.note ?? '';
    switch (progress.outcome) {
      case 'completed':
        return make(
          'succeeded',
          `${kek}: ${rowsText(rows.moved, rows.total, noun)}, verified; '${progress.from}' retired`,
          { ...base, step: 'done' },
        );
      case 'aborted': {
        // The run's note: `aborted: <reason>; both … still unwrap`, or `aborted; both …` when no reason was given.
        const why = note.replace(/^aborted(: )?/, '').replace(/^; /, 'no reason given; ') || 'no reason given';
        const moved =
          progress.phases.rewrap === undefined ? `no ${noun} moved` : rowsText(rows.moved, rows.total, noun);
        return make('aborted', `${why}; ${moved}`, { ...base, step: lastStep(progress) });
      }
      case 'nothing-to-do':
        return make('nothing-to-do', note.replace(/^nothing to do: /, '') || `${kek}: nothing to do`, {
          ...base,
          step: 'done',
        });
      case 'dry-run':
        return make(
          'dry-run-done',
          `${kek}: ${rowsText(progress.counters.rewrapped, rows.total, noun, 'would move')}, ${n(progress.counters.failed)} unreadable; nothing was written`,
          { ...base, step: 'done' },
        );
      case 'canary':
        return make(
          'canary-done',
          `${kek}: the canary ${noun} is under '${progress.to}' and verified; '${progress.to}' is not promoted`,
          { ...base, step: 'done' },
        );
    }
  }

  const retry = worstRetry(facts);
  const grace =
    progress.phase === 'grace' && progress.graceEndsAt !== undefined
      ? graceCountdown(progress.graceEndsAt, now)
      : undefined;
  const running = { ...base, ...(grace && { grace }) };
  if (retry) {
    return make('retrying', retryingReason(progress.phase, retry, now), {
      ...running,
      retrying: { ...retry, step: progress.phase },
    });
  }
  if (progress.paused) {
    const before =
      progress.heldBefore !== undefined ? `holds before ${progress.heldBefore}` : 'stopping its running steps';
    return make('paused', `${before} (${progress.phase}, ${base.percent}%); rekey resume to go on`, running);
  }
  if (progress.waiting) {
    const { waiting } = progress;
    const label =
      waiting.kind === 'fleet'
        ? 'Waiting for the fleet'
        : waiting.confirmationOnly
          ? 'Waiting for confirmation'
          : 'Waiting for the application';
    // The application's step, then the exact command that tells the run it is done: the line every surface prints.
    const reason =
      waiting.kind === 'application' && waiting.command
        ? `${waiting.instructions}; then ${waiting.command}`
        : waiting.instructions;
    return make('waiting', reason, { ...running, ...(waiting.command && { command: waiting.command }) }, label);
  }
  const parts: string[] = [progress.phase];
  if (progress.passes > 0) parts.push(`pass ${progress.passes}`);
  if (progress.phase === 'rewrap' || progress.passes > 0) {
    parts.push(`${base.percent}% (${rowsText(rows.moved, rows.total, noun)})`);
  }
  if (grace) parts.push(`'${progress.from}' retires at ${grace.endsAt} (in ${grace.remaining})`);
  return make('running', parts.join(', '), running);
}

/** The phase an ended run was in when it ended (its `done` phase says nothing). */
function lastStep(progress: RotationProgress): string {
  let last = 'validate';
  let at = -1;
  for (const [phase, times] of Object.entries(progress.phases)) {
    if (phase !== 'done' && times && times.startedAt >= at) {
      at = times.startedAt;
      last = phase;
    }
  }
  return last;
}

/** Values a migration has moved, and how many there were when it planned. */
function migrationRows(report: MigrationReport): RunStatus['rows'] {
  return {
    moved: report.totals.migrated,
    total: report.fields.reduce((sum, field) => sum + field.legacyAtStart, 0),
  };
}

/** The status of a `rekey migrate-dek` run, in the same words as a rotation's. */
export function migrationRunStatus(facts: RunFacts & { report?: MigrationReport }, now: number): RunStatus {
  const { report } = facts;
  const rows = report ? migrationRows(report) : { moved: 0, total: 0 };
  const done = report?.phase === 'done' && report.outcome !== 'aborted';
  const percent =
    rows.total === 0 ? (done ? 100 : 0) : Math.min(100, Math.floor((rows.moved / rows.total) * 1000) / 10);
  const base = { step: report?.phase ?? 'planning', percent, rows };

  const failed = failedStatus(facts, report, 'migration', base);
  if (failed) return failed;
  if (!report) return make('running', 'starting', base);

  const values = rowsText(rows.moved, rows.total, 'value');
  const unreadable = report.totals.unreadable > 0 ? `, ${n(report.totals.unreadable)} unreadable` : '';
  if (report.phase === 'done' && facts.execution !== 'RUNNING') {
    switch (report.outcome) {
      case 'aborted':
        return make('aborted', `${report.abortReason ?? 'aborted by an operator'}; ${values}`, base);
      case 'dry-run':
        return make(
          'dry-run-done',
          `${rowsText(report.totals.migrated, rows.total, 'value', 'would move')}${unreadable}; nothing was written`,
          base,
        );
      default: {
        const left = report.legacyLeft ?? 0;
        return make(
          'succeeded',
          `${values} under the tenants' DEKs${unreadable}` +
            (left > 0 ? `; ${n(left)} legacy value(s) left (listed in the report)` : '') +
            `; ${n(report.totals.deksProvisioned)} DEK(s) provisioned`,
          base,
        );
      }
    }
  }
  const retry = worstRetry(facts);
  if (retry) {
    return make('retrying', retryingReason(report.phase, retry, now), {
      ...base,
      retrying: { ...retry, step: report.phase },
    });
  }
  if (report.paused) {
    const holding = report.partsRunning
      ? `stopping: ${report.partsRunning} part(s) finishing their batch`
      : 'holds before the next batch';
    return make('paused', `${holding} (${percent}%); rekey resume to go on`, base);
  }
  const parts: string[] = [report.phase];
  if (report.passes > 0) parts.push(`pass ${report.passes}`);
  if (report.phase === 'migrating') parts.push(`${percent}% (${values})`);
  return make('running', parts.join(', '), base);
}
