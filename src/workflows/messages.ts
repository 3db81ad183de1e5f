// Every signal, query and update of rekey's workflows (rotation, migration, destruction), defined once; clients import
// these.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { DestroyProgress } from '../rotation/destroy-progress';
import type { Outcome, ProgressReport } from '../rotation/progress';
import type { MigrationReport } from '../rotation/migration-report';

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
 * Every operator action is also a signal, under the update's name and with its input, for clients that cannot send
 * an update (tctl v1, scripts, the Web UI's signal form). The signal and the update run one handler body: the update
 * answers, or is refused with the reason; the signal's effect, or its refusal with the same reason
 * (`confirmStep signal ignored: …`), is read from the `progress` query. `pause`, `resume` and `abort` above are the
 * signals of the pauseRotation, resumeRotation and abortRotation updates.
 */
export const setGraceSignal = defineSignal<[GraceChange]>('setGrace');
export const overrideFleetGateSignal = defineSignal<[reason: string]>('overrideFleetGate');
export const confirmStepSignal = defineSignal<[StepConfirmation]>('confirmStep');

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
/** A migration's report (`rekey status dek-migration-<target>`). */
export const migrationProgressQuery = defineQuery<MigrationReport>('progress');
/**
 * The migration's `pause`, `resume` and `abort` signals (above) for callers that need an answer (`rekey pause
 * dek-migration-<target>`, the admin API): each returns the report once the run has taken it in, from the same handler
 * body as its signal. Running parts stop at their next batch.
 */
export const pauseMigrationUpdate = defineUpdate<MigrationReport>('pauseMigration');
export const resumeMigrationUpdate = defineUpdate<MigrationReport>('resumeMigration');
export const abortMigrationUpdate = defineUpdate<MigrationReport, [reason: string]>('abortMigration');

/** Where a retired KEK's destruction stands (the workflow `rekey-destroy-…`): waiting, proving, refused (and why). */
export const destroyProgressQuery = defineQuery<DestroyProgress>('destroyProgress');

// The rotation notices of a schedule (src/workflows/schedule-notices.ts).
export interface NoticeState {
  scheduleId: string;
  target: string;
  notifyBefore: string;
  /** The schedule's next rotation and when its notice goes out (ISO 8601), while there is one. */
  nextRotation?: string;
  nextNotice?: string;
  /** The rotation the last notice announced, and when it went out. */
  noticedFor?: string;
  lastNoticeAt?: string;
  /** How many attempts the last notice took (more than 1: its receiver refused it first). */
  lastNoticeAttempts?: number;
  /** While the receiver refuses the notice due now: since when, how often, why, and when it is tried again. */
  failing?: NoticeFailing;
  /** The last rotation whose notice never went out: its receiver refused it until the schedule moved on. */
  missedNotice?: string;
  ended?: string;
}

export interface NoticeFailing {
  /** The rotation the notice announces. */
  rotationAt: string;
  /** When the first refused attempt was made, and the last. */
  since: string;
  lastAttemptAt: string;
  attempts: number;
  lastError: string;
  nextAttemptAt: string;
}

export const noticeStateQuery = defineQuery<NoticeState>('progress');
