// FROZEN: the rotation workflow as build 47ef157 ran it, before targets. Rotations that build started (and their
// continue-as-new runs) replay and finish on this code after an upgrade; test/workflows/histories/47ef157 proves it.
// Do not change what it schedules or in which order (what it answers may change: ended() says how a failed run ended,
// state only). Remove it, with its patch check in ../rotate-kek.ts, once no
// rotation started before the upgrade is running (see "Deploys during a rotation" in the README).
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  ContinueAsNew,
  continueAsNew,
  allHandlersFinished,
  isCancellation,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../../activities';
import type { SliceOutcome } from '../../activities/rewrap';
import { formatDuration, parseDuration } from '../../rotation/durations';
import {
  addSliceResult,
  enterPhase,
  failedProgress,
  initialProgress,
  report,
  setPaused,
  type Phase,
  type ProgressReport,
  type RotationProgress,
} from '../../rotation/progress';
import { parseRotationRequest, type RotationRequest, type RotationSettings } from '../../rotation/rotation-input';
import type { TenantRange } from '../../rotation/slices';
import {
  abortSignal,
  abortUpdate,
  overrideFleetGateUpdate,
  pauseSignal,
  pauseUpdate,
  progressQuery,
  resumeSignal,
  resumeUpdate,
  setGraceUpdate,
  type GraceChange,
} from '../messages';
import { RekeyFromKek, RekeyPhase, RekeyToKek } from '../search-attributes';
import { InvalidRotationError, runFailure } from '../../errors';
import { failedDetails } from '../../rotation/web-ui';

/** Errors no retry can fix: the activity fails at once and the workflow reports why. */
const NON_RETRYABLE = [
  'InvalidRotationError',
  'KeyMaterialError',
  'UnknownKekError',
  'KekTransitionError',
  'KekFingerprintMismatchError',
  'RetireRefusedError',
];

// Registry and bookkeeping steps: quick statements; retried with backoff through database or worker outages.
const steps = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 30,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
});

// Slice parts: bounded by their time budget; a lost worker is noticed within the heartbeat timeout and the part
// resumes elsewhere from its committed progress. Cancelled on pause and abort, and awaited until they stop.
const slices = proxyActivities<Activities>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '20 seconds',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 30,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
});

// Fleet polls back off from 5 s to 5 min: prompt when the fleet is nearly ready, cheap when it waits for a deploy.
const FLEET_POLL_FIRST_MS = 5_000;
const FLEET_POLL_MAX_MS = 300_000;
const VERIFY_SAMPLE = 200;
const LISTED_TENANTS = 20;

/** A part of a slice still to run. Its progress key is stable across retries, pauses and continue-as-new. */
interface PendingPart {
  progressKey: string;
  range: TenantRange;
  part: number;
  pass: number;
}

/** What continue-as-new carries to the next run. */
export interface LegacyCarriedState {
  runKey: string;
  from: string;
  to: string;
  progress: RotationProgress;
  pending: PendingPart[];
  graceEndsAt?: number;
  fleetOverridden: boolean;
  aborted: boolean;
  abortReason?: string;
  promoted: boolean;
  /** Set by a grace change made before the grace period started. */
  gracePeriodMs?: number;
}

type RotationReport = ProgressReport;

export async function rotateKekLegacy(request: RotationRequest, carried?: LegacyCarriedState): Promise<RotationReport> {
  let settings: RotationSettings;
  try {
    settings = parseRotationRequest(request);
  } catch (err) {
    if (err instanceof InvalidRotationError) throw ApplicationFailure.nonRetryable(err.message, err.name);
    throw err;
  }
  const run = new RotationRun(request, settings, carried);
  setHandler(progressQuery, () => run.report());
  setHandler(pauseSignal, () => run.pause());
  setHandler(resumeSignal, () => run.resume());
  setHandler(abortSignal, (reason) => run.abort(reason));
  setHandler(pauseUpdate, () => {
    run.pause();
    return run.report();
  });
  setHandler(resumeUpdate, () => {
    run.resume();
    return run.report();
  });
  setHandler(abortUpdate, (reason) => {
    run.abort(reason);
    return run.report();
  });
  setHandler(setGraceUpdate, (change) => run.setGrace(change), {
    validator: (change: GraceChange) => validateGraceChange(change),
  });
  setHandler(
    overrideFleetGateUpdate,
    (reason) => {
      run.overrideFleetGate(reason);
      return run.report();
    },
    {
      validator: (reason: string) => {
        if (!reason || reason.trim().length === 0) throw new Error('say why the fleet gate is overridden');
      },
    },
  );
  try {
    return await run.execute();
  } catch (err) {
    const failure = explain(err);
    // Added after the freeze, state only (no command): the progress query and the Web UI's details of a run this
    // build failed say so, with its code, as this build's runs do, once a later worker replays it.
    if (!(err instanceof ContinueAsNew) && !isCancellation(err)) run.ended(failure);
    throw failure;
  }
}

function validateGraceChange(change: GraceChange): void {
  const asked = (change.extendBy !== undefined ? 1 : 0) + (change.endNow ? 1 : 0);
  if (asked !== 1) throw new Error('give exactly one of extendBy (e.g. "2d") or endNow');
  if (change.extendBy !== undefined && parseDuration(change.extendBy) === undefined) {
    throw new Error(`extendBy '${change.extendBy}' is not a duration like 2d, 12h or 30m`);
  }
}

/** An activity that failed for good becomes the workflow's failure, with the activity's own message. */
function explain(err: unknown): unknown {
  if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure) {
    return ApplicationFailure.nonRetryable(err.cause.message, err.cause.type ?? 'RotationFailed');
  }
  return err;
}

class RotationRun {
  private progress: RotationProgress;
  private readonly state: Omit<LegacyCarriedState, 'progress'>;
  private readonly running = new Map<string, CancellationScope>();
  private graceVersion = 0;

  constructor(
    private readonly request: RotationRequest,
    private readonly settings: RotationSettings,
    carried: LegacyCarriedState | undefined,
  ) {
    const info = workflowInfo();
    if (carried) {
      const { progress, ...rest } = carried;
      this.progress = progress;
      this.state = rest;
    } else {
      this.progress = initialProgress(settings.from, settings.to, settings.dryRun, Date.now());
      this.state = {
        runKey: `${info.workflowId}/${info.firstExecutionRunId}`,
        from: settings.from,
        to: settings.to,
        pending: [],
        fleetOverridden: false,
        aborted: false,
        promoted: false,
      };
    }
  }

  report(): ProgressReport {
    return report(this.progress, Date.now());
  }

  /** Added after the freeze: the run failed with `failure` (see rotateKekLegacy). State only: no command. */
  ended(failure: unknown): void {
    const answer = runFailure(failure);
    this.progress = failedProgress(this.progress, answer);
    setCurrentDetails(failedDetails(this.report(), answer, workflowInfo().workflowId));
  }

  pause(): void {
    if (this.progress.outcome !== 'running') return;
    this.progress = setPaused(this.progress, true, Date.now());
    this.cancelRunningSlices();
  }

  resume(): void {
    this.progress = setPaused(this.progress, false, Date.now());
  }

  abort(reason?: string): void {
    if (this.progress.phase === 'retire' || this.progress.outcome !== 'running') return;
    this.state.aborted = true;
    this.state.abortReason = reason || undefined;
    this.cancelRunningSlices();
  }

  overrideFleetGate(reason: string): void {
    this.state.fleetOverridden = true;
    this.progress = { ...this.progress, note: `fleet gate overridden: ${reason}` };
  }

  setGrace(change: GraceChange): { graceEndsAt: string } {
    const now = Date.now();
    if (this.state.graceEndsAt === undefined) {
      // Not in grace yet: change the period it will start with.
      const current = this.state.gracePeriodMs ?? this.settings.gracePeriodMs;
      const period = change.endNow ? 0 : current + (parseDuration(change.extendBy!) ?? 0);
      this.state.gracePeriodMs = period;
      return { graceEndsAt: new Date(now + period).toISOString() };
    }
    this.state.graceEndsAt = change.endNow ? now : this.state.graceEndsAt + (parseDuration(change.extendBy!) ?? 0);
    this.progress = { ...this.progress, graceEndsAt: this.state.graceEndsAt };
    this.graceVersion++;
    return { graceEndsAt: new Date(this.state.graceEndsAt).toISOString() };
  }

  async execute(): Promise<RotationReport> {
    const { settings } = this;
    if (this.progress.phase === 'validate') {
      const { from, nothingToDo } = await steps.validateRotation(this.request);
      this.state.from = from;
      this.progress = { ...this.progress, from };
      if (nothingToDo !== undefined) {
        this.progress = { ...this.progress, note: `nothing to do: ${nothingToDo}` };
        return this.finish('nothing-to-do');
      }
      if (this.state.aborted) return this.finish('aborted');
      if (settings.dryRun) {
        this.enter('rewrap');
        return this.rewrapPhase();
      }
      this.enter('provision');
    }
    if (this.progress.phase === 'provision') {
      if (this.state.to === 'new') this.state.to = await steps.proposeKekId();
      this.progress = { ...this.progress, to: this.state.to };
      await steps.provisionKek({ kekId: this.state.to, generate: settings.to === 'new' });
      if (this.state.aborted) return this.finish('aborted');
      if (settings.tenantId !== undefined) {
        // Canary: one tenant under the new (still provisioned) KEK; no promotion, nothing retired.
        this.enter('rewrap');
        return this.rewrapPhase();
      }
      this.enter('promote');
    }
    if (this.progress.phase === 'promote') {
      if (!this.state.promoted) {
        // No live instance may meet a DEK it cannot unwrap: all must hold `to` before it wraps anything.
        await this.waitForFleet('unwrap');
        if (this.state.aborted) return this.finish('aborted');
        await steps.promoteKek({ from: this.state.from, to: this.state.to });
        this.state.promoted = true;
      }
      this.enter('rewrap');
    }
    if (this.progress.phase === 'rewrap') return this.rewrapPhase();
    if (this.progress.phase === 'grace') return this.gracePhase();
    throw ApplicationFailure.nonRetryable(`cannot resume a rotation in phase ${this.progress.phase}`);
  }

  /** Passes over what is still on `from`, slice by slice, until none is left; then verify. */
  private async rewrapPhase(): Promise<RotationReport> {
    const { settings } = this;
    for (;;) {
      if (this.state.pending.length === 0) {
        const singlePass = settings.dryRun || settings.tenantId !== undefined;
        if (this.progress.passes > 0 && singlePass) break;
        if (this.progress.passes === 1) {
          // The last passes start only once every live instance wraps with `to`: no late writer re-creates stale rows.
          await this.waitForFleet('wrap');
          if (this.state.aborted) return this.finish('aborted');
        }
        const plan = await steps.planSlices({
          from: this.state.from,
          slices: settings.parallelism * 2,
          tenantId: settings.tenantId,
        });
        if (this.progress.passes === 0) this.progress = { ...this.progress, staleAtStart: plan.stale };
        else if (plan.stale === 0) break;
        if (this.progress.passes >= settings.maxPasses) return this.failWithStale(plan.stale);
        this.progress = { ...this.progress, passes: this.progress.passes + 1 };
        const pass = this.progress.passes;
        this.state.pending = plan.ranges.map((range, i) => ({
          progressKey: `${this.state.runKey}/pass-${pass}/slice-${i}`,
          range,
          part: 0,
          pass,
        }));
      }
      const stopped = await this.runPending();
      if (stopped === 'aborted') return this.finish('aborted');
      if (stopped === 'continue-as-new') return this.continueAsNew();
    }
    if (settings.dryRun) return this.finish('dry-run');
    return this.verifyPhase();
  }

  /** Runs pending slice parts, at most `parallelism` at once, until none is left or the run must stop. */
  private async runPending(): Promise<'done' | 'aborted' | 'continue-as-new'> {
    const inFlight = new Set<Promise<void>>();
    let failure: Error | undefined;
    for (;;) {
      if (failure !== undefined) throw failure;
      if (this.state.aborted && inFlight.size === 0) return 'aborted';
      const rotate = this.shouldContinueAsNew();
      if (rotate && inFlight.size === 0) return 'continue-as-new';
      while (
        !this.state.aborted &&
        !this.progress.paused &&
        !rotate &&
        inFlight.size < this.settings.parallelism &&
        this.state.pending.length > 0
      ) {
        const part = this.state.pending.shift()!;
        const promise: Promise<void> = this.runPart(part)
          .catch((err: unknown) => {
            failure ??= err instanceof Error ? err : new Error(String(err));
          })
          .finally(() => inFlight.delete(promise));
        inFlight.add(promise);
      }
      if (inFlight.size === 0 && this.state.pending.length === 0) return 'done';
      // Sleep until something changes: a part finishes (or is handed back), pause, resume, abort.
      const started = inFlight.size;
      const pendingBefore = this.state.pending.length;
      const { paused } = this.progress;
      const { aborted } = this.state;
      await condition(
        () =>
          inFlight.size < started ||
          this.state.pending.length !== pendingBefore ||
          this.progress.paused !== paused ||
          this.state.aborted !== aborted ||
          failure !== undefined,
      );
    }
  }

  private async runPart(part: PendingPart): Promise<void> {
    const scope = new CancellationScope();
    this.running.set(part.progressKey, scope);
    let outcome: SliceOutcome;
    try {
      outcome = await scope.run(() =>
        slices.rewrapSlice({
          from: this.state.from,
          to: this.state.to,
          range: part.range,
          tenantId: this.settings.tenantId,
          batchSize: this.settings.batchSize,
          dryRun: this.settings.dryRun,
          timeBudgetMs: this.settings.sliceTimeBudgetMs,
          progressKey: `${part.progressKey}/part-${part.part}`,
          countExisting: part.pass === 1 && part.part === 0,
        }),
      );
    } catch (err) {
      if (!isCancellation(err)) throw err;
      // Paused or aborted: the part resumes later from its committed progress, under the same key.
      this.state.pending.unshift(part);
      return;
    } finally {
      this.running.delete(part.progressKey);
    }
    this.progress = addSliceResult(this.progress, outcome.counters, outcome.failures);
    if (!outcome.done) {
      this.state.pending.push({ ...part, range: { ...part.range, after: outcome.cursor }, part: part.part + 1 });
    }
  }

  private cancelRunningSlices(): void {
    for (const scope of this.running.values()) scope.cancel();
  }

  private async verifyPhase(): Promise<RotationReport> {
    this.enter('verify');
    const verdict = await steps.verifyRotation({
      from: this.state.from,
      to: this.state.to,
      sampleSize: VERIFY_SAMPLE,
      tenantId: this.settings.tenantId,
    });
    if (verdict.unreadable.length > 0) {
      throw ApplicationFailure.nonRetryable(
        `verify: ${verdict.unreadable.length} of ${verdict.sampled} sampled DEKs do not unwrap with '${this.state.to}': ` +
          verdict.unreadable.map((u) => `${u.tenantId} (${u.reason})`).join(', '),
        'VerifyFailed',
      );
    }
    if (verdict.stale > 0 && this.settings.tenantId !== undefined) {
      throw ApplicationFailure.nonRetryable(
        `canary tenant '${this.settings.tenantId}' is still on '${this.state.from}'`,
        'VerifyFailed',
      );
    }
    if (verdict.stale > 0) {
      // Written meanwhile by an instance that had not yet seen the promotion: one more pass, if the bound allows.
      if (this.progress.passes >= this.settings.maxPasses) return this.failWithStale(verdict.stale);
      this.enter('rewrap');
      return this.rewrapPhase();
    }
    if (this.settings.tenantId !== undefined) return this.finish('canary');
    this.enter('grace');
    return this.gracePhase();
  }

  private async gracePhase(): Promise<RotationReport> {
    this.state.graceEndsAt ??= Date.now() + (this.state.gracePeriodMs ?? this.settings.gracePeriodMs);
    this.progress = { ...this.progress, graceEndsAt: this.state.graceEndsAt };
    for (;;) {
      if (this.state.aborted) return this.finish('aborted');
      const remaining = this.state.graceEndsAt - Date.now();
      if (remaining <= 0) break;
      if (this.shouldContinueAsNew()) return this.continueAsNew();
      const version = this.graceVersion;
      await condition(() => this.state.aborted || this.graceVersion !== version, remaining);
    }
    this.enter('retire');
    await steps.retireKek({ from: this.state.from });
    return this.finish('completed');
  }

  /** Waits until every live application instance can unwrap (or wraps) with `to`; fails after the fleet timeout. */
  private async waitForFleet(kind: 'unwrap' | 'wrap'): Promise<void> {
    const deadline = Date.now() + this.settings.fleetTimeoutMs;
    let interval = FLEET_POLL_FIRST_MS;
    for (;;) {
      const fleet = await steps.fleetReadiness({ kekId: this.state.to, liveWithinMs: this.settings.fleetLiveWithinMs });
      const waitingFor = kind === 'unwrap' ? fleet.cannotUnwrap : fleet.notWrapping;
      const ready = kind === 'unwrap' ? fleet.canUnwrap : fleet.wrapsWith;
      this.progress = { ...this.progress, fleet: { live: fleet.live, ready, waitingFor } };
      if (ready === fleet.live || this.state.fleetOverridden || this.state.aborted) return;
      if (Date.now() >= deadline) {
        throw ApplicationFailure.nonRetryable(
          `fleet not ready after ${formatDuration(this.settings.fleetTimeoutMs)}: ${fleet.live - ready} of ${fleet.live} live ` +
            `instance(s) ${kind === 'unwrap' ? 'cannot unwrap with' : 'do not wrap with'} '${this.state.to}' ` +
            `(${waitingFor.join(', ')}); deploy the key to them, or override the fleet gate`,
          'FleetNotReady',
        );
      }
      await condition(
        () => this.state.fleetOverridden || this.state.aborted,
        Math.min(interval, deadline - Date.now()),
      );
      interval = Math.min(interval * 2, FLEET_POLL_MAX_MS);
    }
  }

  private async failWithStale(stale: number): Promise<never> {
    const tenants = await steps.staleTenants({ from: this.state.from, limit: LISTED_TENANTS });
    const unreadable = this.progress.failedTenants.map((f) => `${f.tenantId}: ${f.reason}`);
    throw ApplicationFailure.nonRetryable(
      `${stale} DEK(s) still on '${this.state.from}' after ${this.progress.passes} pass(es): ${tenants.join(', ')}` +
        (unreadable.length > 0 ? `; unreadable: ${unreadable.join('; ')}` : ''),
      'RewrapIncomplete',
    );
  }

  private shouldContinueAsNew(): boolean {
    const info = workflowInfo();
    return info.continueAsNewSuggested || info.historyLength >= this.settings.maxHistoryEvents;
  }

  private async continueAsNew(): Promise<never> {
    await condition(allHandlersFinished);
    return continueAsNew<typeof rotateKekLegacy>(this.request, { ...this.state, progress: this.progress });
  }

  private enter(phase: Phase): void {
    this.progress = enterPhase(this.progress, phase, Date.now());
    upsertSearchAttributes([
      { key: RekeyPhase, value: phase },
      { key: RekeyFromKek, value: this.state.from },
      { key: RekeyToKek, value: this.state.to },
    ]);
  }

  private finish(outcome: RotationProgress['outcome']): RotationReport {
    this.enter('done');
    const note =
      outcome === 'aborted'
        ? `aborted${this.state.abortReason ? `: ${this.state.abortReason}` : ''}; both '${this.state.from}' and '${this.state.to}' still unwrap, nothing was retired`
        : this.progress.note;
    this.progress = { ...this.progress, outcome, paused: false, note };
    return this.report();
  }
}
