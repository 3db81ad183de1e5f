// The waits between a rotation's steps: for the fleet of application instances that read rekey's registry, or, where
// the application's own configuration picks the current KEK, for evidence that it did what an operator was asked.
// Both are durable, back off from 5 s to 5 min, show in the progress (and so in `status`), and fail after their
// timeout saying what they waited for.
import { workflowInfo } from '@temporalio/workflow';
import { formatDuration } from '../rotation/durations';
import { steps } from './activity-proxies';
import { rotationFailure } from '../errors';
import type { Wait } from '../rotation/progress';
import type { RotationState } from './rotation-state';

const POLL_FIRST_MS = 5_000;
const POLL_MAX_MS = 300_000;

/**
 * Waits until every live application instance can unwrap (or wraps) with `to`; fails after the fleet timeout. Answers
 * whether an operator's override let it go.
 */
export async function waitForFleet(run: RotationState, kind: 'unwrap' | 'wrap'): Promise<'ready' | 'overridden'> {
  const { settings, carried } = run;
  const step = kind === 'unwrap' ? 'promote' : 'last-passes';
  const deadline = waitingSince(run, 'fleet', step) + settings.fleetTimeoutMs;
  let interval = POLL_FIRST_MS;
  for (;;) {
    const fleet = await steps.fleetReadiness({
      ...run.on,
      kekId: carried.to,
      liveWithinMs: settings.fleetLiveWithinMs,
    });
    const waitingFor = kind === 'unwrap' ? fleet.cannotUnwrap : fleet.notWrapping;
    const ready = kind === 'unwrap' ? fleet.canUnwrap : fleet.wrapsWith;
    run.progress = { ...run.progress, fleet: { live: fleet.live, ready, waitingFor } };
    if (ready === fleet.live || carried.fleetOverridden || run.aborted) {
      // An override lets this one gate go: the next gate waits for the fleet again.
      const overridden = ready !== fleet.live && carried.fleetOverridden;
      carried.fleetOverridden = false;
      run.waiting(undefined);
      return overridden ? 'overridden' : 'ready';
    }
    const wrongKey = fleet.wrongKey ?? [];
    run.waiting({
      kind: 'fleet',
      step,
      instructions:
        `every live instance (application or rekey worker) must ${kind === 'unwrap' ? 'hold' : 'wrap with'} '${carried.to}' (waiting for ${waitingFor.join(', ')})` +
        (wrongKey.length > 0 ? `; another key under that id, not the registered one: ${wrongKey.join(', ')}` : ''),
      command: `rekey override-fleet ${workflowInfo().workflowId} --reason "…"`,
    });
    if (Date.now() >= deadline) {
      throw rotationFailure(
        'FleetNotReady',
        `fleet not ready after ${formatDuration(settings.fleetTimeoutMs)}: ${fleet.live - ready} of ${fleet.live} live ` +
          `instance(s) ${kind === 'unwrap' ? 'cannot unwrap with' : 'do not wrap with'} '${carried.to}' ` +
          `(${waitingFor.join(', ')})` +
          (wrongKey.length > 0 ? `; holding another key under that id: ${wrongKey.join(', ')}` : '') +
          '; deploy the registered key to them, or override the fleet gate',
      );
    }
    await run.until(
      () => carried.fleetOverridden || run.aborted,
      Math.min(interval, deadline - Date.now()),
      `fleet: ${ready} of ${fleet.live} ready; next check`,
    );
    interval = Math.min(interval * 2, POLL_MAX_MS);
  }
}

/**
 * Waits until the application has done a step it owns: its configuration names `to` as current (promotion), or it
 * no longer holds `from` (retirement). Evidence is rekey's own configuration or the target's probe; an operator's
 * confirmation also moves the run on. Fails after the confirm timeout, naming what it waited for.
 */
export async function waitForApplication(run: RotationState, step: 'promote' | 'retire'): Promise<void> {
  const { settings, carried } = run;
  const deadline = waitingSince(run, 'application', step) + settings.confirmTimeoutMs;
  const instructions = carried.instructions?.[step] ?? `the application must ${step} '${carried.to}'`;
  let interval = POLL_FIRST_MS;
  for (;;) {
    if (run.aborted) return;
    const evidence = await steps.applicationEvidence({
      ...run.on,
      step,
      from: carried.from,
      to: carried.to,
      since: carried.since ?? new Date(0).toISOString(),
    });
    const confirmed = carried.confirmed[step];
    if (evidence.satisfied || confirmed !== undefined) {
      run.waiting(undefined);
      run.progress = {
        ...run.progress,
        note: evidence.satisfied ? `${step}: ${evidence.detail}` : `${step} confirmed by an operator: ${confirmed}`,
      };
      return;
    }
    run.waiting({
      kind: 'application',
      step,
      instructions,
      command: `rekey confirm ${workflowInfo().workflowId} --step ${step} --note "…"`,
      ...(evidence.confirmationOnly && { confirmationOnly: true }),
    });
    run.progress = { ...run.progress, note: evidence.detail };
    if (Date.now() >= deadline) {
      throw rotationFailure(
        'ApplicationNotReady',
        `waited ${formatDuration(settings.confirmTimeoutMs)} for the application to ${step}: ${instructions} (${evidence.detail})`,
      );
    }
    await run.until(
      () => carried.confirmed[step] !== undefined || run.aborted,
      Math.min(interval, deadline - Date.now()),
      `waiting for the application to ${step}; next check`,
    );
    interval = Math.min(interval * 2, POLL_MAX_MS);
  }
}

/**
 * When the run began to wait at this gate: now, or, in a run continued as new from the middle of that wait, when the
 * run before it began (its progress still shows the wait), so that the gate's timeout counts from the first run.
 */
function waitingSince(run: RotationState, kind: Wait['kind'], step: Wait['step']): number {
  const { waiting } = run.progress;
  return waiting?.kind === kind && waiting.step === step ? waiting.since : Date.now();
}
