// Every signal, query and update of the rotation workflow, defined once; clients import these.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { DestroyProgress } from '../rotation/destroy-progress';
import type { ProgressReport } from '../rotation/progress';

/** Fire-and-forget controls (Web UI, `temporal workflow signal`, scripts). */
export const pauseSignal = defineSignal('pause');
export const resumeSignal = defineSignal('resume');
export const abortSignal = defineSignal<[reason?: string]>('abort');

/** The same controls for callers that need an answer ("paused at 41%"). */
export const pauseUpdate = defineUpdate<ProgressReport>('pauseRotation');
export const resumeUpdate = defineUpdate<ProgressReport>('resumeRotation');
export const abortUpdate = defineUpdate<ProgressReport, [reason: string]>('abortRotation');

export interface GraceChange {
  /** Add this much to the grace period, e.g. '2d'. */
  extendBy?: string;
  /** End the grace period now: retire as soon as the checks pass. */
  endNow?: boolean;
}
/**
 * The answer to a grace change: in grace, its new end (ISO 8601); before grace has begun, the new period, which
 * starts once verify passes.
 */
export interface GraceAnswer {
  graceEndsAt?: string;
  gracePeriod?: string;
  startsWhenVerified?: boolean;
}
/** Shortens or extends the grace period. */
export const setGraceUpdate = defineUpdate<GraceAnswer, [GraceChange]>('setGrace');

/** Operator override of the fleet gate: promote (or run the last pass) without waiting for every instance. */
export const overrideFleetGateUpdate = defineUpdate<ProgressReport, [reason: string]>('overrideFleetGate');

export interface StepConfirmation {
  /** The step the application owns that the operator has done: promote (it wraps with `to`) or retire. */
  step: 'promote' | 'retire';
  /** Who did what, for the record. */
  note: string;
}
/** An operator's word that the application did what the run waits for (the run also checks what it can). */
export const confirmStepUpdate = defineUpdate<ProgressReport, [StepConfirmation]>('confirmStep');

export const progressQuery = defineQuery<ProgressReport>('progress');

/** Where a retired KEK's destruction stands (the workflow `rekey-destroy-…`): waiting, proving, refused (and why). */
export const destroyProgressQuery = defineQuery<DestroyProgress>('destroyProgress');
