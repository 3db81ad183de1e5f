// The rotation workflow: validate → provision → promote → rewrap → verify → grace → retire, for one target.
// Thin and deterministic: this file wires every message to the rotation's state (rotation-state.ts) and runs the
// phases in order; which phases a run takes is one table (src/rotation/phase-plan.ts). Activities do all I/O and
// crypto (src/activities); the waits are in gates.ts, the parallel slices in slice-scheduler.ts.
import {
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  condition,
  ContinueAsNew,
  isCancellation,
  ParentClosePolicy,
  patched,
  setHandler,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { destroyRetiredKek } from './destroy-kek';
import { destroyWorkflowIdOf, legacyDestroyWorkflowId } from '../rotation/identity';
import { formatDuration, parseDuration } from '../rotation/durations';
import { startProof, type LabelProof } from '../rotation/label-proof';
import {
  addChecks,
  describeUnreadableLabels,
  startCheck,
  type LabelCheck,
  type LabelCheckOutcome,
} from '../rotation/label-check';
import { addCounters, emptyCounters } from '../rewrap/counters';
import type { RotationProgress } from '../rotation/progress';
import type { TenantRange } from '../rotation/slices';
import {
  effectiveRestoreWindowMs,
  parseRotationRequest,
  type RotationRequest,
  type RotationSettings,
} from '../rotation/rotation-input';
import { rotationRunStatus } from '../rotation/run-status';
import { explainFailure, labelChecks, lockedSteps, steps } from './activity-proxies';
import { proveInParts, runInParts } from './label-proofs';
import { waitForApplication, waitForFleet } from './gates';
import { rotateKekLegacy, type LegacyCarriedState } from './legacy/rotate-kek-47ef157';
import {
  abortSignal,
  abortUpdate,
  confirmStepSignal,
  confirmStepUpdate,
  overrideFleetGateSignal,
  overrideFleetGateUpdate,
  pauseSignal,
  pauseUpdate,
  progressQuery,
  resumeSignal,
  resumeUpdate,
  setGraceSignal,
  setGraceUpdate,
  validatedUpdate,
  type GraceChange,
  type StepConfirmation,
} from './messages';
import { setControlHandlers } from './controls';
import { RotationState, type CarriedState, type PendingPart, type RotationReport } from './rotation-state';
import { recordEnd } from './run-record';
import { runPending } from './slice-scheduler';
import { ControlRefusedError, InvalidRotationError, rotationFailure } from '../errors';

export type { CarriedState, RotationReport } from './rotation-state';

/** Marks histories written by this workflow; those without it were written by build 47ef157 (the legacy code). */
export const TARGETS_PATCH = 'rekey-targets-1';
/**
 * Marks histories whose retirement scheduled the retired KEK's destruction after its restore window, decided at
 * retirement (runs that reached retire before RETIRE_PROOF_PATCH replay it as they ran).
 */
export const DESTROY_PATCH = 'rekey-destroy-after-window-1';
/** Marks runs whose first step checks that they run under their keyspace's workflow id. */
export const KEYSPACE_PATCH = 'rekey-keyspace-1';
/** Marks runs that start a destruction under an id naming the keyspace (`rekey-destroy-<target>.<db>.<kek>`). */
export const KEYSPACE_DESTROY_PATCH = 'rekey-keyspace-destroy-id-1';
/**
 * Marks runs that decided at their start whether their retirement schedules a destruction (recorded in the first
 * workflow task; a run started by an earlier build has no marker there and replays false: no destruction).
 */
export const DESTROY_DECIDED_PATCH = 'rekey-destroy-decided-at-start-1';
/**
 * Marks retirements that prove every row labelled `from` first, in parts outside the lock, before the operator of
 * an application-owned target is asked to remove it, and again under the lock.
 */
export const RETIRE_PROOF_PATCH = 'rekey-retire-proves-rows-1';
/**
 * Marks runs whose verify checks every row labelled `to` under `to` (in parts, carried across continue-as-new) before
 * grace and retire: a row labelled `to` whose value is still sealed under `from` fails the run, with `from` kept.
 */
export const VERIFY_LABELS_PATCH = 'safety4-verify-labelled-to-1';
/**
 * Marks runs whose retire step is given the request's reason for a restore window below the minimum (the step raises
 * a shorter window without one), and whose destruction waits for the window the step applied.
 */
export const RESTORE_WINDOW_PATCH = 'proofs4-retire-restore-window-1';
/**
 * Marks runs whose retire step is given the request's reason to go on while legacy values under `from` remain
 * (--allow-legacy-values): the step refuses without it. Asked only of runs that carry a reason.
 */
export const LEGACY_VALUES_PATCH = 'legacy5-retire-legacy-values-1';
/**
 * The retire step is given what verify's check of the rows labelled `to` proved (VerifiedUnder), so that its pre-pass
 * does not try again, under the same remote KEK, the rows the database shows unchanged since (issue 27, quota6).
 */
export const VERIFIED_REUSE_PATCH = 'quota6-retire-reuses-verify-1';

const VERIFY_SAMPLE = 200;
const LISTED_TENANTS = 20;

export async function rotateKek(
  request: RotationRequest,
  carried?: CarriedState | LegacyCarriedState,
): Promise<RotationReport> {
  // A rotation started by build 47ef157 finishes on its own code, continue-as-new runs included.
  if ((carried !== undefined && !('version' in carried)) || !patched(TARGETS_PATCH)) {
    return rotateKekLegacy(request, carried);
  }
  let settings: RotationSettings;
  try {
    settings = parseOrFail(request);
  } catch (err) {
    // A request of the wrong shape (clients check it first; `temporal workflow start` does not): refused, as validate
    // refuses, and the `validated` update asked with the start gets the refusal before the run fails.
    setHandler(validatedUpdate, () => Promise.reject(err as Error));
    await handlersFinished();
    throw err;
  }
  const run = new RotationState(request, settings, carried);
  decideDestruction(run, carried === undefined);

  // Answers once validate has decided. It adds no command: histories recorded without it replay as they were.
  setHandler(validatedUpdate, () => run.validated());
  setHandler(progressQuery, () => run.report());
  // Every operator action is an update and a signal with one body (controls.ts): the update refuses, with the reason,
  // what the run cannot honour where it is; the signal notes that refusal in the progress. Adds no command.
  const ignored = (signal: string, why: string) => run.ignored(signal, why);
  setControlHandlers(
    pauseUpdate,
    pauseSignal,
    { refuse: () => refuse(run.refusesPause()), apply: () => (run.pause(), run.report()) },
    ignored,
  );
  setControlHandlers(resumeUpdate, resumeSignal, { apply: () => (run.resume(), run.report()) }, ignored);
  setControlHandlers(
    abortUpdate,
    abortSignal,
    { refuse: () => refuse(run.refusesAbort()), apply: (reason) => (run.abort(reason), run.report()) },
    ignored,
  );
  setControlHandlers(
    setGraceUpdate,
    setGraceSignal,
    { refuse: validateGraceChange, apply: (change) => run.setGrace(change) },
    ignored,
  );
  setControlHandlers(
    overrideFleetGateUpdate,
    overrideFleetGateSignal,
    {
      refuse: (reason) => validateFleetOverride(run, reason),
      apply: (reason) => (run.overrideFleetGate(reason), run.report()),
    },
    ignored,
  );
  setControlHandlers(
    confirmStepUpdate,
    confirmStepSignal,
    {
      refuse: (confirmation) => validateConfirmation(run, confirmation),
      apply: (confirmation) => (run.confirm(confirmation), run.report()),
    },
    ignored,
  );

  let report: RotationReport;
  try {
    report = await runPhases(run);
  } catch (err) {
    const failure = explainFailure(err);
    // Validate's refusal is the `validated` update's answer: the run fails only once that update has it.
    run.failed(failure);
    await handlersFinished();
    if (!(err instanceof ContinueAsNew) && !isCancellation(err)) {
      // The progress says how the run ended before anything else happens (the record's activity included).
      run.ended(failure);
      await recordRotationEnd(run, (failure as Error).message ?? String(failure));
    }
    throw failure;
  }
  await handlersFinished();
  await recordRotationEnd(run);
  return report;
}

async function runPhases(run: RotationState): Promise<RotationReport> {
  for (;;) {
    // A paused run takes no further step: it holds here before each phase (and inside a phase before each step).
    await run.holdIfPaused(run.phase);
    const finished = run.aborted ? run.finish('aborted') : await PHASES[run.phase](run);
    if (finished !== undefined) return finished;
  }
}

/** The run's end into rekey's run history, in the one status (a failure with its message). */
function recordRotationEnd(run: RotationState, failure?: string): Promise<void> {
  const { progress } = run;
  return recordEnd({
    ...run.on,
    kind: 'rotation',
    from: run.carried.from,
    to: run.carried.to,
    startedAt: progress.phases.validate?.startedAt ?? workflowInfo().runStartTime.getTime(),
    status: rotationRunStatus(
      failure === undefined ? { execution: 'COMPLETED', progress } : { execution: 'FAILED', failure, progress },
      Date.now(),
    ),
    rowsUnreadable: progress.counters.failed,
  });
}

/**
 * Waits until every update handler has answered (the `validated` update waits for validate's verdict), so that the
 * run never ends with a question unanswered; even when the run is cancelled. Adds no command.
 */
function handlersFinished(): Promise<void> {
  return CancellationScope.nonCancellable(() => condition(allHandlersFinished));
}

/** Each phase does its work and moves the run on; a phase that ends the run returns its report. */
const PHASES: Record<RotationState['phase'], (run: RotationState) => Promise<RotationReport | undefined>> = {
  validate,
  provision,
  promote,
  rewrap,
  verify,
  grace,
  retire,
  done: (run) => Promise.resolve(run.report()),
};

async function validate(run: RotationState): Promise<RotationReport | undefined> {
  // A run of this build checks, in its first step, that it runs under its keyspace's workflow id (a run started by
  // hand under another id is refused, naming the id to use); runs of older builds were validated without it.
  const checked = patched(KEYSPACE_PATCH)
    ? await steps.validateRotation(run.request, { workflowId: workflowInfo().workflowId })
    : await steps.validateRotation(run.request);
  if (checked.keyspace !== undefined) run.carried.keyspace = checked.keyspace;
  run.carried.from = checked.from;
  if (checked.to !== undefined) run.carried.to = checked.to;
  // An unfinished rotation taken up again: its `to` is already the active KEK.
  if (checked.resumes) run.carried.promoted = true;
  run.carried.currentKekOwner = checked.currentKekOwner ?? 'registry';
  run.carried.since = checked.since;
  run.carried.instructions = checked.instructions;
  run.progress = {
    ...run.progress,
    from: checked.from,
    to: run.carried.to,
    noun: checked.noun,
    ...(checked.census && { census: checked.census }),
  };
  if (checked.nothingToDo !== undefined) {
    run.progress = { ...run.progress, note: `nothing to do: ${checked.nothingToDo}` };
    return run.finish('nothing-to-do');
  }
  if (run.aborted) return run.finish('aborted');
  run.advance();
  return undefined;
}

async function provision(run: RotationState): Promise<RotationReport | undefined> {
  const { carried } = run;
  const generate = carried.to === 'new';
  if (generate) carried.to = await steps.proposeKekId(run.on);
  run.progress = { ...run.progress, to: carried.to };
  await steps.provisionKek({ ...run.on, kekId: carried.to, generate, from: carried.from });
  if (run.aborted) return run.finish('aborted');
  run.advance();
  return undefined;
}

async function promote(run: RotationState): Promise<RotationReport | undefined> {
  const { carried } = run;
  if (!carried.promoted) {
    // No reader may meet a row it cannot decrypt: the fleet (or the application) holds `to` before it wraps anything.
    const gate =
      carried.currentKekOwner === 'application'
        ? await waitForApplication(run, 'promote').then(() => 'ready')
        : await waitForFleet(run, 'unwrap');
    await run.holdIfPaused('promote', gate === 'overridden');
    if (run.aborted) return run.finish('aborted');
    await run.commit('promote', () => steps.promoteKek({ ...run.on, from: carried.from, to: carried.to }));
    carried.promoted = true;
  }
  run.advance();
  return undefined;
}

/** Passes over what is still on `from`, slice by slice, until none is left. */
async function rewrap(run: RotationState): Promise<RotationReport | undefined> {
  const { carried, settings } = run;
  if (run.kind === 'canary' && run.progress.passes === 0 && carried.currentKekOwner === 'registry') {
    // The canary's row goes under `to` too: only once every live instance can unwrap with it.
    const gate = await waitForFleet(run, 'unwrap');
    await run.holdIfPaused('the canary', gate === 'overridden');
    if (run.aborted) return run.finish('aborted');
  }
  for (;;) {
    if (carried.pending.length === 0) {
      if (run.progress.passes > 0 && run.kind !== 'full') break;
      await run.holdIfPaused(`rewrap pass ${run.progress.passes + 1}`);
      if (run.aborted) return run.finish('aborted');
      if (run.progress.passes === 1 && carried.currentKekOwner === 'registry') {
        // The last passes start only once every live instance wraps with `to`: no late writer re-creates stale rows.
        await waitForFleet(run, 'wrap');
        if (run.aborted) return run.finish('aborted');
      }
      const plan = await steps.planSlices({
        ...run.on,
        from: carried.from,
        slices: settings.parallelism * 2,
        tenantId: settings.tenantId,
      });
      if (run.progress.passes === 0) run.progress = { ...run.progress, staleAtStart: plan.stale };
      // Done when nothing is labelled `from`, or when the last pass moved nothing under it (what is left only has a
      // label to put right, or cannot be read): verify decides from the values, not the labels.
      else if (plan.stale === 0 || run.progress.counters.rewrapped === carried.passBaseline) break;
      carried.passBaseline = run.progress.counters.rewrapped;
      if (run.progress.passes >= settings.maxPasses) return failWithStale(run, plan.stale);
      // Every pass tries every row still labelled `from`, unreadable ones included: what is unreadable is what the
      // latest pass found, not the sum over passes.
      run.progress = { ...run.progress, passes: run.progress.passes + 1, ...withoutFailures(run.progress) };
      carried.pending = passParts(run, plan.ranges);
    }
    const stopped = await runPending(run);
    if (stopped === 'aborted') return run.finish('aborted');
    if (stopped === 'continue-as-new') return run.continueAsNew();
  }
  if (run.kind === 'dry-run') return run.finish('dry-run');
  run.advance();
  return undefined;
}

/**
 * The parts of a pass: a slice per range of the rows labelled `from`, and one part for the rows labelled with
 * neither KEK (a label can lie; those that open under `from` move too). A canary has its one row only.
 */
function passParts(run: RotationState, ranges: TenantRange[]): PendingPart[] {
  const { carried } = run;
  const pass = run.progress.passes;
  const parts: PendingPart[] = ranges.map((range, i) => ({
    progressKey: `${carried.runKey}/pass-${pass}/slice-${i}`,
    range,
    part: 0,
    pass,
    label: `slice ${i + 1}/${ranges.length}`,
  }));
  if (run.kind !== 'canary') {
    parts.push({
      progressKey: `${carried.runKey}/pass-${pass}/others`,
      range: { after: '', until: null },
      part: 0,
      pass,
      scan: 'others',
      label: 'rows on neither KEK',
    });
  }
  return parts;
}

/** Back to rewrap for one more pass (the caller checked the bound): planned afresh, whatever the last pass moved. */
function anotherPass(run: RotationState): void {
  run.carried.passBaseline = undefined;
  run.carried.verified = undefined;
  run.enter('rewrap');
}

async function verify(run: RotationState): Promise<RotationReport | undefined> {
  const { carried } = run;
  // A check of the rows labelled `to` under way (continued as new): the scans before it passed.
  if (carried.labelCheck === undefined) {
    // A full run checks every row labelled `to` after the scans, instead of a sample of them.
    const checksAll = run.kind === 'full' && patched(VERIFY_LABELS_PATCH);
    const scanned = await verifyLabels(run, checksAll ? 0 : VERIFY_SAMPLE);
    if (scanned !== 'passed') return scanned;
    if (!checksAll) {
      run.advance();
      return undefined;
    }
    carried.labelCheck = startCheck();
  }
  const checked = await checkLabelled(run);
  if (checked === 'aborted') return run.finish('aborted');
  if (checked === 'continue-as-new') return run.continueAsNew();
  carried.labelCheck = undefined;
  if (checked.unreadable > 0) {
    throw rotationFailure('VerifyFailed', describeUnreadableLabels(checked, carried.from, carried.to));
  }
  // What the check proved, for retire (none from a check of a build before it).
  if (checked.verified) carried.verified = checked.verified;
  run.advance();
  return undefined;
}

/**
 * Verify's scans (as every build ran them): rows labelled `from` tried, `sampleSize` rows labelled `to` opened, rows
 * labelled with neither tried under `from`. 'passed' when nothing is left to move and the run is a full one.
 */
async function verifyLabels(run: RotationState, sampleSize: number): Promise<RotationReport | undefined | 'passed'> {
  const { carried, settings } = run;
  const verdict = await steps.verifyRotation({
    ...run.on,
    from: carried.from,
    to: carried.to,
    sampleSize,
    tenantId: settings.tenantId,
  });
  if (verdict.unreadable.length > 0) {
    throw rotationFailure(
      'VerifyFailed',
      `verify: ${verdict.unreadable.length} of ${verdict.sampled} sampled rows do not decrypt with '${carried.to}': ` +
        verdict.unreadable.map((u) => `${u.tenantId} (${u.reason})`).join(', '),
    );
  }
  if ((verdict.mislabelled ?? 0) > 0) {
    run.progress = {
      ...run.progress,
      note: `${verdict.mislabelled} row(s) labelled '${carried.from}' are under '${carried.to}' (written by the application since): they do not need '${carried.from}'`,
    };
  }
  if (verdict.stale > 0 && run.kind === 'canary') {
    throw rotationFailure('VerifyFailed', `canary row '${settings.tenantId}' is still on '${carried.from}'`);
  }
  if (verdict.stale > 0) {
    // Written meanwhile by an instance that had not yet seen the promotion: one more pass, if the bound allows.
    if (run.progress.passes >= settings.maxPasses) return failWithStale(run, verdict.stale);
    anotherPass(run);
    return undefined;
  }
  if ((verdict.hidden ?? 0) > 0) {
    // Rows whose label names neither KEK but whose value is under `from`: one more pass over those.
    if (run.progress.passes >= settings.maxPasses) return failWithStale(run, verdict.hidden ?? 0);
    run.progress = { ...run.progress, passes: run.progress.passes + 1 };
    carried.pending = passParts(run, []);
    run.enter('rewrap');
    return undefined;
  }
  if (run.kind === 'canary') return run.finish('canary');
  return 'passed';
}

/**
 * Checks every row labelled `to` under `to`, in parts of a slice's time budget (each resumable), until none is left
 * after its cursor; each part's sums are added once, as its result arrives. Holds while paused; stops for abort and
 * for continue-as-new between parts, and goes on from the carried cursor in the next run.
 */
async function checkLabelled(run: RotationState): Promise<LabelCheck | 'aborted' | 'continue-as-new'> {
  const { carried, settings } = run;
  const state = carried.labelCheck!;
  let stopped: 'aborted' | 'continue-as-new' | undefined;
  const checked = await runInParts<LabelCheck, LabelCheckOutcome>(
    state,
    (after) =>
      labelChecks.checkLabelled({
        ...run.on,
        from: carried.from,
        to: carried.to,
        after,
        batchSize: settings.batchSize,
        timeBudgetMs: settings.sliceTimeBudgetMs,
      }),
    addChecks,
    {
      beforePart: async () => {
        run.progress = { ...run.progress, labelCheck: { checked: state.sum.checked, done: false } };
        await run.holdIfPaused(`the check of the rows labelled '${carried.to}'`);
        if (run.aborted) stopped = 'aborted';
        else if (run.shouldContinueAsNew()) stopped = 'continue-as-new';
        return stopped && 'stop';
      },
    },
  );
  if (checked === 'stopped') return stopped!;
  run.progress = { ...run.progress, labelCheck: { checked: checked.checked, done: true } };
  return checked;
}

async function grace(run: RotationState): Promise<RotationReport | undefined> {
  const { carried, settings } = run;
  carried.graceEndsAt ??= Date.now() + (carried.gracePeriodMs ?? settings.gracePeriodMs);
  run.progress = { ...run.progress, graceEndsAt: carried.graceEndsAt };
  for (;;) {
    if (run.aborted) return run.finish('aborted');
    const remaining = carried.graceEndsAt - Date.now();
    if (remaining <= 0) break;
    if (run.shouldContinueAsNew()) return run.continueAsNew();
    const changes = run.changeCount();
    // Under HISTORY_BOUND_PATCH a message that changes nothing (a signal ignored, say) also counts: the wait continues
    // as new once the history passes the bound, whatever woke it.
    await run.until(
      () => run.aborted || run.changeCount() !== changes,
      remaining,
      `grace until ${new Date(carried.graceEndsAt).toISOString()}`,
    );
  }
  run.advance();
  return undefined;
}

/**
 * Whether retiring `from` schedules its destruction after the restore window: decided once, in the run's first workflow
 * task, and carried in its progress through continue-as-new. A run started by this build records the marker there; a
 * run started by an earlier build has none at that point and replays false, as does progress carried from one.
 */
function decideDestruction(run: RotationState, firstRun: boolean): void {
  // A dry run and a canary retire nothing.
  if (run.progress.destruction !== undefined || run.kind !== 'full') return;
  const scheduled = firstRun && patched(DESTROY_DECIDED_PATCH);
  const window = formatDuration(run.settings.restoreWindowMs);
  run.progress = {
    ...run.progress,
    destruction: scheduled
      ? {
          scheduled,
          why: `decided when the run started: the retired KEK is destroyed once its restore window (${window}) ends`,
        }
      : {
          scheduled,
          why: `the run was started by a build that decided only at retirement (before ${DESTROY_DECIDED_PATCH}): no destruction is scheduled, and the retired KEK stays retired`,
        },
  };
}

async function retire(run: RotationState): Promise<RotationReport | undefined> {
  // Runs that reached retire before the proofs existed replay as they ran.
  if (!patched(RETIRE_PROOF_PATCH)) return retireAsRecorded(run);
  const { carried } = run;
  if (carried.currentKekOwner === 'application' && carried.proof?.stage !== 'before-retire') {
    // A run continued as new while the operator was asked goes on waiting: the rows were proved before the asking.
    if (!carried.retireAsked) {
      // Every row labelled `from` is proved, and relabelled where it does not need it, before the operator is asked
      // to remove `from` from the application.
      const proof = await prove(run, 'before-confirm');
      if (proof === 'aborted') return run.finish('aborted');
      if (proof === 'continue-as-new') return run.continueAsNew();
      if (proof.needed > 0) return onceMore(run, proof.needed);
      // What no label shows: rows labelled with neither KEK whose value is under `from` (and rows labelled `from`
      // since).
      const verdict = await steps.verifyRotation({
        ...run.on,
        from: carried.from,
        to: carried.to,
        sampleSize: 0,
      });
      if (verdict.stale > 0) return onceMore(run, verdict.stale);
      if ((verdict.hidden ?? 0) > 0) return onceMore(run, verdict.hidden ?? 0);
      carried.retireAsked = true;
    }
    await waitForApplication(run, 'retire');
    await run.holdIfPaused('retire');
    carried.retireAsked = undefined;
    if (run.aborted) return run.finish('aborted');
  }
  // Rows labelled `from` since: proved outside the lock, so that what retire proves under it is what came after.
  const proof = await prove(run, 'before-retire');
  if (proof === 'aborted') return run.finish('aborted');
  if (proof === 'continue-as-new') return run.continueAsNew();
  const reason = run.request.allowShortRestoreWindow;
  const windowed = patched(RESTORE_WINDOW_PATCH);
  const legacyReason = run.request.allowLegacyValues;
  const legacyAllowed = legacyReason !== undefined && patched(LEGACY_VALUES_PATCH);
  const verified = carried.verified;
  const reusesVerify = verified !== undefined && patched(VERIFIED_REUSE_PATCH);
  const retired = await run.commit('retire', () =>
    lockedSteps.retireKek({
      ...run.on,
      from: carried.from,
      restoreWindowMs: run.settings.restoreWindowMs,
      ...(windowed && reason !== undefined && { allowShortRestoreWindow: reason }),
      ...(legacyAllowed && { allowLegacyValues: legacyReason }),
      ...(reusesVerify && { verified }),
      progressKey: `${carried.runKey}/retire`,
    }),
  );
  if ((retired.relabelled ?? 0) > 0) addRelabelled(run, retired.relabelled ?? 0);
  if (run.progress.destruction?.scheduled) {
    // The window the step applied, as it says; a step of a build before it says nothing, and the run computes the
    // window as that build applied it (the same commands: histories recorded before it replay).
    const window =
      retired.restoreWindowMs ??
      (windowed ? effectiveRestoreWindowMs(run.settings.restoreWindowMs, reason) : run.settings.restoreWindowMs);
    await scheduleDestruction(run, carried.from, window);
  }
  return run.finish('completed');
}

/** Rows still need `from` before retirement: another pass moves them, if the bound allows. */
async function onceMore(run: RotationState, stale: number): Promise<RotationReport | undefined> {
  if (run.progress.passes >= run.settings.maxPasses) return failWithStale(run, stale);
  anotherPass(run);
  return undefined;
}

/**
 * Proves every row labelled `from`, in parts of a slice's time budget (each resumable), until none is left after its
 * cursor: rows under a usable KEK are relabelled, the rest counted. Holds while paused; stops for abort and for
 * continue-as-new between parts, and goes on from the carried cursor in the next run.
 */
async function prove(
  run: RotationState,
  stage: 'before-confirm' | 'before-retire',
): Promise<LabelProof | 'aborted' | 'continue-as-new'> {
  const { carried, settings } = run;
  if (carried.proof?.stage !== stage) {
    carried.proofRounds = (carried.proofRounds ?? 0) + 1;
    carried.proof = { ...startProof(carried.proofRounds), stage };
  }
  const state = carried.proof;
  let stopped: 'aborted' | 'continue-as-new' | undefined;
  const proof = await proveInParts(
    {
      ...run.on,
      kekId: carried.from,
      batchSize: settings.batchSize,
      timeBudgetMs: settings.sliceTimeBudgetMs,
      keyPrefix: `${carried.runKey}/retire-proof`,
    },
    state,
    {
      beforePart: async () => {
        run.progress = { ...run.progress, retireProof: { ...state.sum, stage, done: false } };
        await run.holdIfPaused(`the proof of the rows labelled '${carried.from}'`);
        if (run.aborted) stopped = 'aborted';
        else if (run.shouldContinueAsNew()) stopped = 'continue-as-new';
        return stopped && 'stop';
      },
      afterPart: (part) => addRelabelled(run, part.relabelled),
    },
  );
  if (proof === 'stopped') return stopped!;
  carried.proof = undefined;
  run.progress = { ...run.progress, retireProof: { ...proof, stage, done: true } };
  return proof;
}

/** Rows a proof relabelled count with those the passes relabelled: each part's once, from its progress row. */
function addRelabelled(run: RotationState, relabelled: number): void {
  run.progress = {
    ...run.progress,
    counters: addCounters(run.progress.counters, { ...emptyCounters(), relabelled }),
  };
}

/** The retirement as builds before RETIRE_PROOF_PATCH scheduled it, for the histories they wrote. */
async function retireAsRecorded(run: RotationState): Promise<RotationReport | undefined> {
  const { carried } = run;
  if (carried.currentKekOwner === 'application') {
    const verdict = await steps.verifyRotation({
      ...run.on,
      from: carried.from,
      to: carried.to,
      sampleSize: 0,
    });
    if (verdict.stale > 0 || (verdict.hidden ?? 0) > 0) {
      if (run.progress.passes >= run.settings.maxPasses) return failWithStale(run, verdict.stale);
      anotherPass(run);
      return undefined;
    }
    await waitForApplication(run, 'retire');
    await run.holdIfPaused('retire');
    if (run.aborted) return run.finish('aborted');
  }
  await run.commit('retire', () =>
    steps.retireKek({ ...run.on, from: carried.from, restoreWindowMs: run.settings.restoreWindowMs }),
  );
  // Replaying, the history says whether that build scheduled a destruction (its marker). Live, such a run was
  // started by an earlier build and follows the decision taken at its start (none): see decideDestruction.
  const scheduled = workflowInfo().unsafe.isReplaying
    ? patched(DESTROY_PATCH)
    : run.progress.destruction?.scheduled === true && patched(DESTROY_PATCH);
  if (scheduled) await scheduleDestruction(run, carried.from, run.settings.restoreWindowMs);
  return run.finish('completed');
}

/**
 * Starts the retired KEK's destruction after its restore window, as a workflow of its own that outlives this run. Its
 * id names the target, the database and the KEK unambiguously (finding 8); one already running under it is the same
 * KEK's in the same keyspace (restored and retired again): it destroys only once the current window has ended, and the
 * note says so. Runs of builds before keyspaces keep the id they had, whose collisions are reported the same way.
 */
async function scheduleDestruction(run: RotationState, kekId: string, restoreWindowMs: number): Promise<void> {
  const { target, keyspace } = run.carried;
  const keyspaced = keyspace !== undefined && patched(KEYSPACE_DESTROY_PATCH);
  const workflowId = keyspaced ? destroyWorkflowIdOf(target, keyspace, kekId) : legacyDestroyWorkflowId(target, kekId);
  try {
    await startChild(destroyRetiredKek, {
      workflowId,
      args: [{ target, kekId, restoreWindowMs, ...(keyspaced && { keyspace }) }],
      parentClosePolicy: ParentClosePolicy.ABANDON,
    });
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    run.progress = {
      ...run.progress,
      note: keyspaced
        ? `'${kekId}' retired; its destruction was already scheduled (${workflowId}, the same KEK of the same keyspace, restored and retired since): it destroys '${kekId}' only once its restore window, counted from this retirement, has ended`
        : `'${kekId}' retired; a destruction is already running under ${workflowId}, an id a build before keyspaces made ambiguous: if it is not '${kekId}' of target '${target}', '${kekId}' stays retired and is not destroyed (rekey keys restore can bring it back; destroy it by hand once nothing needs it)`,
    };
  }
}

async function failWithStale(run: RotationState, stale: number): Promise<never> {
  const { carried } = run;
  const ids = await steps.staleTenants({ ...run.on, from: carried.from, limit: LISTED_TENANTS });
  const unreadable = run.progress.failedTenants.map((f) => `${f.tenantId}: ${f.reason}`);
  throw rotationFailure(
    'RewrapIncomplete',
    `${stale} row(s) still on '${carried.from}' after ${run.progress.passes} pass(es): ${ids.join(', ')}` +
      (unreadable.length > 0 ? `; unreadable: ${unreadable.join('; ')}` : ''),
  );
}

function parseOrFail(request: RotationRequest): RotationSettings {
  try {
    return parseRotationRequest(request);
  } catch (err) {
    if (err instanceof InvalidRotationError) throw ApplicationFailure.nonRetryable(err.message, err.name);
    throw err;
  }
}

/** Counters of a new pass: its unreadable rows are counted afresh. */
function withoutFailures(progress: RotationProgress): Pick<RotationProgress, 'counters' | 'failedTenants'> {
  return { counters: { ...progress.counters, failed: 0 }, failedTenants: [] };
}

/** A validator's refusal: a typed error whose kind the CLI and the API map to "not now" (exit 4, HTTP 409). */
function refuse(reason: string | undefined): void {
  if (reason !== undefined) throw new ControlRefusedError(reason);
}

function validateFleetOverride(run: RotationState, reason: string): void {
  if (typeof reason !== 'string' || reason.trim().length === 0) {
    throw new InvalidRotationError('say why the fleet gate is overridden');
  }
  // An override lets one waiting gate go; kept for later, it would also skip the gate before the last passes.
  if (run.progress.waiting?.kind !== 'fleet') {
    throw new ControlRefusedError(
      'nothing waits for the fleet now: override when `status` shows the fleet gate waiting',
    );
  }
}

function validateGraceChange(change: GraceChange): void {
  if (typeof change !== 'object' || change === null) {
    throw new InvalidRotationError('give exactly one of extendBy (e.g. "2d") or endNow');
  }
  const asked = (change.extendBy !== undefined ? 1 : 0) + (change.endNow ? 1 : 0);
  if (asked !== 1) throw new InvalidRotationError('give exactly one of extendBy (e.g. "2d") or endNow');
  if (change.extendBy !== undefined && parseDuration(change.extendBy) === undefined) {
    throw new InvalidRotationError(`extendBy '${change.extendBy}' is not a duration like 2d, 12h or 30m`);
  }
}

function validateConfirmation(run: RotationState, confirmation: StepConfirmation): void {
  if (confirmation?.step !== 'promote' && confirmation?.step !== 'retire') {
    throw new InvalidRotationError("step must be 'promote' or 'retire'");
  }
  if (typeof confirmation.note !== 'string' || confirmation.note.trim().length === 0) {
    throw new InvalidRotationError('say who did what, in note');
  }
  if (run.carried.currentKekOwner !== 'application') {
    throw new InvalidRotationError(
      `target '${run.carried.target}' reads its current KEK from rekey's registry: there is nothing to confirm`,
    );
  }
  // A confirmation answers the step the run waits for, and no other: a promote confirmed while the run waits on
  // retire (or a retire while nothing asks for it) would be recorded as done without anyone having done it.
  const waiting = run.progress.waiting;
  if (waiting?.kind === 'application' && waiting.step !== confirmation.step) {
    throw new ControlRefusedError(
      `the rotation waits for the application to ${waiting.step} (${waiting.instructions}), not to ${confirmation.step}: confirm --step ${waiting.step} once that is done`,
    );
  }
  if (waiting?.kind !== 'application') {
    throw new ControlRefusedError(
      `the rotation waits for no confirmation now (${run.progress.phase}${waiting ? `, waiting for the fleet: ${waiting.instructions}` : ''}): confirm --step ${confirmation.step} once status shows it waiting for the application to ${confirmation.step}`,
    );
  }
}
