// Every signal, query and update of the rotation workflow, defined once; clients import these.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { DestroyProgress } from '../rotation/destroy-progress';
import type { Outcome, ProgressReport } from '../rotation/progress';
import type { MigrationReport } from './migrate-dek';

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

/**
 * What a rotation's validate step established, as the run answers the `validated` update: the KEKs it resolved
 * (`current` named), who owns promotion and retirement, and, for a run that ended there, why.
 */
export interface RotationValidated {
  target: string;
  from: string;
  /** The KEK it rotates to; 'new' until provision names the generated one (the progress then says which). */
  to: string;
  /** `to` is the active KEK already: validate took up a rotation that did not finish (or promotion has happened). */
  promoted: boolean;
  currentKekOwner: 'registry' | 'application';
  /** For a target whose application picks its current KEK: what the operator does at promote and at retire. */
  instructions?: { promote: string; retire: string };
  /** 'running', or how the run ended at validate ('nothing-to-do', 'aborted'), with `note` saying why. */
  outcome: Outcome;
  note?: string;
}
/**
 * Answers once the validate step has decided: with what it established, or with its refusal (the run then fails with
 * the same error). Clients start a rotation and ask this in one call (Update-with-Start), so that a rotation that
 * cannot succeed is refused at once, with its error's kind; asked later, it answers at once.
 */
export const validatedUpdate = defineUpdate<RotationValidated>('validated');

/**
 * The same for a migration (`rekey migrate-dek`): answers with the report once its first plan is made (the KEK it
 * wraps new DEKs with, the legacy values per field), or with the refusal its plan step gave.
 */
export const migrationPlannedUpdate = defineUpdate<MigrationReport>('migrationPlanned');
/** Where a retired KEK's destruction stands (the workflow `rekey-destroy-…`): waiting, proving, refused (and why). */
export const destroyProgressQuery = defineQuery<DestroyProgress>('destroyProgress');
