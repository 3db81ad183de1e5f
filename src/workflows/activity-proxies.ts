// The activities as the rotation workflow calls them, with their options. A retry cannot fix any of rekey's own errors
// (NON_RETRYABLE, src/errors.ts): the activity fails at once and the workflow reports why.
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  proxyActivities,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { NON_RETRYABLE } from '../errors';

/** Registry and bookkeeping steps: quick statements; retried with backoff through database or worker outages. */
export const steps = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 30,
    nonRetryableErrorTypes: [...NON_RETRYABLE],
  },
});

/**
 * One attempt at a rotation notice. The notice workflow tries again itself, for as long as the receiver refuses, and
 * records each failure where its query and the metrics show it; `steps`' retries gave up for good after 30 attempts
 * (about 25 minutes of a receiver's outage).
 */
export const noticeAttempts = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { maximumAttempts: 1 },
});

/**
 * The run's record in rekey's history, its last step: a few tries over a few minutes, so that a database that is down
 * delays the end of a run only that long (Temporal's visibility lists the run meanwhile).
 */
export const bookkeeping = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 10,
    nonRetryableErrorTypes: [...NON_RETRYABLE],
  },
});

/**
 * Slice parts: bounded by their time budget; a lost worker is noticed within the heartbeat timeout and the part
 * resumes elsewhere from its committed progress. Cancelled on pause and abort, and awaited until they stop.
 */
const SLICE_OPTIONS: ActivityOptions = {
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '20 seconds',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 30,
    nonRetryableErrorTypes: [...NON_RETRYABLE],
  },
};
export const slices = proxyActivities<Activities>(SLICE_OPTIONS);

/** The same, with the one-line summary the Web UI shows for this call (`rewrap slice 3/4, pass 1`). */
export function slicesWithSummary(summary: string) {
  return proxyActivities<Activities>({ ...SLICE_OPTIONS, summary });
}

/**
 * The proofs of the rows labelled with a KEK before retire and destroy: parts bounded by their time budget, like
 * slices, and resumed from their last heartbeat elsewhere when a worker is lost.
 */
export const proofs = proxyActivities<Activities>({
  ...SLICE_OPTIONS,
  summary: 'prove the rows labelled with the KEK',
});

/**
 * The check of every row labelled with the new KEK before grace and retire: parts bounded by their time budget, like
 * slices, and resumed from their last heartbeat elsewhere when a worker is lost.
 */
export const labelChecks = proxyActivities<Activities>({
  ...SLICE_OPTIONS,
  summary: 'check the rows labelled with the new KEK',
});

/**
 * Retire and destroy: one transaction holding the KEK's registry row, in which every row still labelled with it is
 * proved (those written since the proof before it). They heartbeat per batch of rows.
 */
export const lockedSteps = proxyActivities<Activities>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '1 minute',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 30,
    nonRetryableErrorTypes: [...NON_RETRYABLE],
  },
});

/** An activity that failed for good becomes the workflow's failure, with the activity's own message. */
export function explainFailure(err: unknown): unknown {
  if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure) {
    return ApplicationFailure.nonRetryable(err.cause.message, err.cause.type ?? 'RotationFailed');
  }
  return err;
}
