// The state of one rotation and what each message does to it. The workflow (rotate-kek.ts) wires messages to these
// methods and runs the phases; nothing here schedules an activity.
import {
  allHandlersFinished,
  CancellationScope,
  condition,
  continueAsNew,
  patched,
  setCurrentDetails,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { formatDuration, parseDuration } from '../rotation/durations';
import { nextPhase, runKind, type RunKind } from '../rotation/phase-plan';
import {
  enterPhase,
  failedProgress,
  initialProgress,
  report,
  setPaused,
  type Outcome,
  type Phase,
  type ProgressReport,
  type RetireProof,
  type RotationProgress,
  type Wait,
} from '../rotation/progress';
import type { RotationRequest, RotationSettings } from '../rotation/rotation-input';
import { currentDetails, failedDetails } from '../rotation/web-ui';
import type { TenantRange } from '../rotation/slices';
import type { ProofState } from '../rotation/label-proof';
import type { LabelCheckState } from '../rotation/label-check';
import type { VerifiedUnder } from '../rotation/verified-mark';
import type { GraceAnswer, GraceChange, RotationValidated, StepConfirmation } from './messages';
import { RekeyFromKek, RekeyPhase, RekeyTarget, RekeyToKek } from './search-attributes';
import { runFailure } from '../errors';

/**
 * Marks runs whose every wait (grace, the fleet and application gates, a pause) continues as new once the history has
 * passed `maxHistoryEvents` and every handler has finished; runs without it checked the bound only between parts of
 * work and in grace's own loop, so a run waiting for an operator grew with each message it was sent.
 */
export const HISTORY_BOUND_PATCH = 'edges-history-bound-1';

/** A part of a slice still to run. Its progress key is stable across retries, pauses and continue-as-new. */
export interface PendingPart {
  progressKey: string;
  range: TenantRange;
  part: number;
  pass: number;
  /** 'others': the rows labelled with neither KEK, tried under `from` (absent: the rows labelled `from`). */
  scan?: 'others';
  /** How the Web UI names it: `slice 3/4` (absent in parts planned before it existed). */
  label?: string;
}

/** What continue-as-new carries to the next run. `version` tells it from what build 47ef157 carried. */
export interface CarriedState {
  version: 2;
  runKey: string;
  target: string;
  /** The keyspace (`<database id>/<schema.table>`) every step checks; absent in runs of builds before keyspaces. */
  keyspace?: string;
  from: string;
  to: string;
  /** When the rotation began, by the target database's clock: rows the application writes after it are evidence. */
  since?: string;
  progress: RotationProgress;
  pending: PendingPart[];
  graceEndsAt?: number;
  fleetOverridden: boolean;
  aborted: boolean;
  abortReason?: string;
  promoted: boolean;
  /** Set by a grace change made before the grace period started. */
  gracePeriodMs?: number;
  currentKekOwner: 'registry' | 'application';
  instructions?: { promote: string; retire: string };
  /** Operators' confirmations of the steps the application owns. */
  confirmed: Partial<Record<StepConfirmation['step'], string>>;
  /** Rows rewrapped when the current pass began: a pass that moves none ends the passes. */
  passBaseline?: number;
  /** A proof of the rows labelled `from` under way before retirement (see retire in rotate-kek.ts). */
  proof?: ProofState & { stage: RetireProof['stage'] };
  /** A check of the rows labelled `to` under way in verify (see verify in rotate-kek.ts). */
  labelCheck?: LabelCheckState;
  /** What verify's completed check proved, for retire's pre-pass (src/rotation/verified-mark.ts). */
  verified?: VerifiedUnder;
  /** Proofs started so far: each names its progress rows by its round. */
  proofRounds?: number;
  /**
   * Set once the rows were proved and checked before the operator of an application-owned target is asked to retire
   * `from`: a run continued as new from that wait goes on waiting, without proving again.
   */
  retireAsked?: boolean;
}

export type RotationReport = ProgressReport;

export class RotationState {
  private current!: RotationProgress;
  readonly carried: Omit<CarriedState, 'progress'>;
  readonly kind: RunKind;
  /** A registry step in flight that an abort can no longer stop (the activity commits whatever the workflow does). */
  committing: 'promote' | 'retire' | undefined;
  /** Bumped by every message that may change what a waiting step should do. */
  private changes = 0;
  private readonly running = new Map<string, CancellationScope>();
  /** The failure validate refused the run with (the run ends with it once the `validated` update has it). */
  private refusal: Error | undefined;

  constructor(
    readonly request: RotationRequest,
    readonly settings: RotationSettings,
    carried: CarriedState | undefined,
  ) {
    this.kind = runKind(settings);
    if (carried) {
      const { progress, ...rest } = carried;
      this.progress = progress;
      this.carried = rest;
    } else {
      const info = workflowInfo();
      const now = Date.now();
      this.progress = initialProgress(settings.from, settings.to, settings.dryRun, now, settings.target);
      this.carried = {
        version: 2,
        runKey: `${info.workflowId}/${info.firstExecutionRunId}`,
        target: settings.target,
        ...(request.keyspace !== undefined && { keyspace: request.keyspace }),
        from: settings.from,
        to: settings.to,
        pending: [],
        fleetOverridden: false,
        aborted: false,
        promoted: false,
        currentKekOwner: 'registry',
        confirmed: {},
      };
    }
  }

  /** Every change of the progress also updates what the Web UI shows as the run's current details. */
  get progress(): RotationProgress {
    return this.current;
  }

  set progress(progress: RotationProgress) {
    this.current = progress;
    setCurrentDetails(currentDetails(report(progress, Date.now()), workflowInfo().workflowId));
  }

  /** What every activity input names: the target, and the keyspace its worker must resolve it to (when known). */
  get on(): { target: string; keyspace?: string } {
    const { target, keyspace } = this.carried;
    return keyspace === undefined ? { target } : { target, keyspace };
  }

  get phase(): Phase {
    return this.progress.phase;
  }

  get aborted(): boolean {
    return this.carried.aborted;
  }

  report(): ProgressReport {
    return report(this.progress, Date.now());
  }

  /** A counter every message bumps: a wait compares it to wake up when anything changed. */
  changeCount(): number {
    return this.changes;
  }

  private changed(): void {
    this.changes++;
  }

  // ------------------------------------------------------------------ messages

  /**
   * The `validated` update: waits until validate has decided, then answers with what it established, or throws its
   * refusal (the error the run fails with, type and all).
   */
  async validated(): Promise<RotationValidated> {
    await condition(() => this.refusal !== undefined || this.progress.phase !== 'validate');
    if (this.refusal !== undefined) throw this.refusal;
    const { carried, progress } = this;
    return {
      target: carried.target,
      from: carried.from,
      to: carried.to,
      promoted: carried.promoted,
      currentKekOwner: carried.currentKekOwner,
      ...(carried.instructions && { instructions: carried.instructions }),
      outcome: progress.outcome,
      ...(progress.outcome !== 'running' && progress.note !== undefined && { note: progress.note }),
    };
  }

  /**
   * The run failed: its progress says so (outcome 'failed', with the failure's type, kind and message: what the
   * `progress` query answers tctl and `temporal workflow query` from now on), what it waited for goes from it (its
   * command can no longer act), and the Web UI's current details say failed, with the reason rekey status gives,
   * instead of the phase it was in. State only: no command.
   */
  ended(failure: unknown): void {
    const answer = runFailure(failure);
    this.current = failedProgress(this.current, answer);
    setCurrentDetails(failedDetails(this.report(), answer, workflowInfo().workflowId));
  }

  /** A failure before validate decided is its refusal: the `validated` update answers with it. */
  failed(failure: unknown): void {
    if (this.progress.phase !== 'validate') return;
    this.refusal = failure instanceof Error ? failure : new Error(String(failure));
  }

  /** Why a pause cannot be honoured now, or undefined when it can. */
  refusesPause(): string | undefined {
    if (this.progress.outcome !== 'running') return `the rotation has ended (${this.progress.outcome})`;
    if (this.committing === 'retire') return `'${this.carried.from}' is being retired: nothing is left to pause`;
    return undefined;
  }

  /** Why an abort cannot be honoured now, or undefined when it can. */
  refusesAbort(): string | undefined {
    if (this.progress.outcome !== 'running') return `the rotation has ended (${this.progress.outcome})`;
    if (this.committing === 'retire') {
      return `'${this.carried.from}' is being retired: the rotation completes; nothing is left to abort`;
    }
    if (this.committing === 'promote') {
      return `'${this.carried.to}' is being promoted right now: abort again once it is (the run then stops with both keys usable)`;
    }
    return undefined;
  }

  pause(): void {
    const refused = this.refusesPause();
    if (refused !== undefined) return this.ignored('pause', refused);
    this.progress = setPaused(this.progress, true, Date.now());
    this.cancelRunningSlices();
    this.changed();
  }

  resume(): void {
    this.progress = setPaused(this.progress, false, Date.now());
    this.changed();
  }

  abort(reason?: string): void {
    const refused = this.refusesAbort();
    if (refused !== undefined) return this.ignored('abort', refused);
    this.carried.aborted = true;
    this.carried.abortReason = reason || undefined;
    this.cancelRunningSlices();
    this.changed();
  }

  /** A signal cannot be refused like an update: what it asked and why it was not done goes in the progress note. */
  ignored(what: string, why: string): void {
    if (this.progress.outcome !== 'running') return;
    this.progress = { ...this.progress, note: `${what} signal ignored: ${why}` };
  }

  /**
   * Holds the run before `step` while it is paused: no further step (no promotion, no pass, no verify, no
   * retirement) until it is resumed or aborted. `status` shows what it holds before.
   */
  async holdIfPaused(step: string, keepOverride = false): Promise<void> {
    if (!this.progress.paused || this.aborted) return;
    this.holding(step);
    // A hold right after a fleet gate that an override let go: the next run passes that gate again the same way.
    const carryOverride = () => {
      if (keepOverride) this.carried.fleetOverridden = true;
    };
    await this.until(() => !this.progress.paused || this.aborted, undefined, `paused before ${step}`, carryOverride);
  }

  /**
   * Waits until `done()`, or `timeoutMs` has passed (then false). Under HISTORY_BOUND_PATCH the wait honours the
   * history bound: once the history has passed `maxHistoryEvents` (or the server suggests it) it continues as new when
   * every handler has finished, carrying the state; every caller re-enters its wait from the carried state. A signal or
   * update that arrives meanwhile is applied to the state carried (the server refuses to close a run with a message
   * it has not yet handed to it). `beforeNew` puts into the carried state what the run's stack alone knew.
   */
  async until(
    done: () => boolean,
    timeoutMs: number | undefined,
    summary: string,
    beforeNew?: () => void,
  ): Promise<boolean> {
    if (!patched(HISTORY_BOUND_PATCH)) {
      if (timeoutMs === undefined) return condition(done).then(() => true);
      return condition(done, timeoutMs, { summary });
    }
    const full = () => this.shouldContinueAsNew();
    const continued = () => {
      beforeNew?.();
      return this.continueAsNew();
    };
    if (full() && !done()) return continued();
    const met =
      timeoutMs === undefined
        ? await condition(() => done() || full()).then(() => true)
        : await condition(() => done() || full(), timeoutMs, { summary });
    if (done()) return true;
    if (met && full()) return continued();
    return false;
  }

  /** Records what a paused run holds before (shown by `status`). */
  holding(step: string): void {
    if (this.progress.paused && this.progress.heldBefore !== step) {
      this.progress = { ...this.progress, heldBefore: step };
    }
  }

  /** Runs a registry step that an abort must not interrupt halfway; aborts are refused while it is in flight. */
  async commit<T>(step: 'promote' | 'retire', run: () => Promise<T>): Promise<T> {
    this.committing = step;
    try {
      return await run();
    } finally {
      this.committing = undefined;
    }
  }

  overrideFleetGate(reason: string): void {
    this.carried.fleetOverridden = true;
    this.progress = { ...this.progress, note: `fleet gate overridden: ${reason}` };
    this.changed();
  }

  confirm(confirmation: StepConfirmation): void {
    this.carried.confirmed[confirmation.step] = confirmation.note;
    this.progress = { ...this.progress, note: `${confirmation.step} confirmed: ${confirmation.note}` };
    this.changed();
  }

  setGrace(change: GraceChange): GraceAnswer {
    const now = Date.now();
    this.changed();
    if (this.carried.graceEndsAt === undefined) {
      // Not in grace yet: change the period it will start with; its end is not known until it starts.
      const current = this.carried.gracePeriodMs ?? this.settings.gracePeriodMs;
      const period = change.endNow ? 0 : current + (parseDuration(change.extendBy!) ?? 0);
      this.carried.gracePeriodMs = period;
      // The answer is also the progress's note: a signal's sender reads it there.
      this.progress = {
        ...this.progress,
        note: `grace period set to ${formatDuration(period)}: it starts once verify passes`,
      };
      return { gracePeriod: formatDuration(period), startsWhenVerified: true };
    }
    this.carried.graceEndsAt = change.endNow ? now : this.carried.graceEndsAt + (parseDuration(change.extendBy!) ?? 0);
    const graceEndsAt = new Date(this.carried.graceEndsAt).toISOString();
    this.progress = { ...this.progress, graceEndsAt: this.carried.graceEndsAt, note: `grace ends at ${graceEndsAt}` };
    return { graceEndsAt };
  }

  // ------------------------------------------------------------------ slices in flight

  track(progressKey: string, scope: CancellationScope): void {
    this.running.set(progressKey, scope);
  }

  untrack(progressKey: string): void {
    this.running.delete(progressKey);
  }

  cancelRunningSlices(): void {
    for (const scope of this.running.values()) scope.cancel();
  }

  // ------------------------------------------------------------------ phases

  /** Moves to the next phase this kind of run takes. */
  advance(): void {
    this.enter(nextPhase(this.kind, this.progress.phase));
  }

  enter(phase: Phase): void {
    this.progress = enterPhase(this.progress, phase, Date.now());
    upsertSearchAttributes([
      { key: RekeyPhase, value: phase },
      { key: RekeyTarget, value: this.carried.target },
      { key: RekeyFromKek, value: this.carried.from },
      { key: RekeyToKek, value: this.carried.to },
    ]);
  }

  waiting(wait: Omit<Wait, 'since'> | undefined): void {
    if (wait === undefined) {
      if (this.progress.waiting !== undefined) this.progress = { ...this.progress, waiting: undefined };
      return;
    }
    if (this.progress.waiting?.step === wait.step && this.progress.waiting.kind === wait.kind) return;
    this.progress = { ...this.progress, waiting: { ...wait, since: Date.now() } };
  }

  finish(outcome: Outcome): RotationReport {
    this.enter('done');
    const note =
      outcome === 'aborted'
        ? `aborted${this.carried.abortReason ? `: ${this.carried.abortReason}` : ''}; both '${this.carried.from}' and '${this.carried.to}' still unwrap, nothing was retired`
        : this.progress.note;
    this.progress = { ...this.progress, outcome, paused: false, heldBefore: undefined, note, waiting: undefined };
    return this.report();
  }

  shouldContinueAsNew(): boolean {
    const info = workflowInfo();
    return info.continueAsNewSuggested || info.historyLength >= this.settings.maxHistoryEvents;
  }

  async continueAsNew(): Promise<never> {
    await condition(allHandlersFinished);
    return continueAsNew<(request: RotationRequest, carried?: CarriedState) => Promise<RotationReport>>(this.request, {
      ...this.carried,
      progress: this.progress,
    });
  }
}
