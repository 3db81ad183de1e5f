import type { RunStatus } from '../rotation/run-status';

// Schema pieces every admin route shares.
export const errorBody = {
  type: 'object',
  properties: {
    error: { type: 'string' },
    message: { type: 'string' },
    /** Dropped by the serializer while the schema lacked it: an error named by a code of its own says what next. */
    next: { type: 'string', description: 'an error named by a code of its own (ERROR_ANSWERS): what to do next' },
    op_id: { type: 'string' },
  },
  required: ['error', 'message'],
} as const;

export const opIdParams = {
  type: 'object',
  properties: { op_id: { type: 'string', minLength: 1, maxLength: 200 } },
  required: ['op_id'],
} as const;

/** The one status of a run (src/rotation/run-status.ts), as every route that shows a run answers it. */
export const runStatusBody = {
  type: 'object',
  description:
    'The one status of the run, in the words of rekey status: Running, Waiting for …, Paused, Retrying, Succeeded, Failed, Aborted, Nothing to do, Dry run done, Canary done',
  properties: {
    state: {
      type: 'string',
      enum: [
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
      ],
    },
    label: { type: 'string' },
    reason: { type: 'string' },
    line: { type: 'string' },
    step: { type: 'string' },
    ended: { type: 'boolean' },
    percent: { type: 'number', description: 'rows moved over rows to move' },
    rows_moved: { type: 'integer' },
    rows_total: { type: 'integer' },
    command: { type: 'string' },
  },
  required: ['state', 'label', 'reason', 'line', 'ended', 'percent'],
} as const;

export const retryingBody = {
  type: 'object',
  description: 'A step that failed and is being retried now, with its last error',
  properties: {
    step: { type: 'string' },
    activity: { type: 'string' },
    attempt: { type: 'integer' },
    last_error: { type: 'string' },
    next_attempt_at: { type: 'string' },
  },
} as const;

/** A failed run's failure as every surface names it (errorAnswer): its code, kind and type, and what to do next. */
export const failureProperties = {
  error: {
    type: 'string',
    description:
      "a failed run: its failure's code, as rekey --json names it (application_not_ready, fleet_not_ready, verify_failed, rewrap_incomplete, rotation_failed; else the kind's: bad_request, refused, …)",
  },
  error_kind: { type: 'string', description: 'a failed run: the kind of its failure (invalid, refused, failed, …)' },
  error_type: { type: 'string', description: 'a failed run: the type of its failure (ApplicationNotReady, …)' },
  next: { type: 'string', description: 'a failed run of a workflow failure type: what to do next' },
} as const;

export function failureFields(s: { error?: string; failureKind?: string; failureType?: string; next?: string }) {
  return {
    ...(s.error !== undefined && { error: s.error }),
    ...(s.failureKind !== undefined && { error_kind: s.failureKind }),
    ...(s.failureType !== undefined && { error_type: s.failureType }),
    ...(s.next !== undefined && { next: s.next }),
  };
}

/** The fields every route that shows a run adds: its one status, the grace countdown, a retrying step. */
export function runStatusFields(run: RunStatus) {
  return {
    run_status: {
      state: run.state,
      label: run.label,
      reason: run.reason,
      line: run.line,
      step: run.step,
      ended: run.ended,
      percent: run.percent,
      rows_moved: run.rows.moved,
      rows_total: run.rows.total,
      ...(run.command !== undefined && { command: run.command }),
    },
    ...(run.grace && { grace_ends_at: run.grace.endsAt, grace_remaining_seconds: run.grace.remainingSeconds }),
    ...(run.retrying && {
      retrying: {
        step: run.retrying.step,
        activity: run.retrying.activity,
        attempt: run.retrying.attempt,
        ...(run.retrying.lastError !== undefined && { last_error: run.retrying.lastError }),
        ...(run.retrying.nextAttemptAt !== undefined && {
          next_attempt_at: new Date(run.retrying.nextAttemptAt).toISOString(),
        }),
      },
    }),
  };
}
