import { addCounters, emptyCounters, type RewrapCounters, type TenantFailure } from '../rewrap/counters';
import type { LabelProof } from './label-proof';
import type { RunFailure } from '../errors';

export const PHASES = ['validate', 'provision', 'promote', 'rewrap', 'verify', 'grace', 'retire', 'done'] as const;
export type Phase = (typeof PHASES)[number];
/** How the run ended ('running' until it has); 'failed': it failed, and `failure` says with what. */
export type Outcome = 'running' | 'completed' | 'aborted' | 'dry-run' | 'canary' | 'nothing-to-do' | 'failed';

export type { TenantFailure } from '../rewrap/counters';

/** What a run is waiting for, in plain words, and how to move it on. */
export interface Wait {
  /** fleet: every live application instance; application: the application's own configuration (an operator). */
  kind: 'fleet' | 'application';
  step: 'promote' | 'retire' | 'last-passes';
  /** What must happen, e.g. "set TALOS_CURRENT_KEK_ID=v2 on every gateway and restart it" (`command` follows it). */
  instructions: string;
  /** The command that moves the run on once it has. */
  command?: string;
  /** The application step has no probe: only an operator's confirmation moves the run on. */
  confirmationOnly?: boolean;
  since: number;
}

/** Everything the `progress` query answers; plain data, carried across continue-as-new. */
export interface RotationProgress {
  /** The keyspace; absent in progress recorded before targets existed (rekey's own). */
  target?: string;
  /** What the target's rows hold ('DEK', 'secret'), for messages and counters. */
  noun?: string;
  from: string;
  to: string;
  phase: Phase;
  outcome: Outcome;
  dryRun: boolean;
  /** Epoch ms (workflow time) when each phase started and ended. */
  phases: Partial<Record<Phase, { startedAt: number; endedAt?: number }>>;
  /** DEKs that were on `from` when the first pass was planned. */
  staleAtStart: number;
  counters: RewrapCounters;
  passes: number;
  paused: boolean;
  pausedMs: number;
  pausedSince?: number;
  /** While paused: the step the run holds before (it takes no further step until resumed). */
  heldBefore?: string;
  /** Rewrap time of earlier visits (verify can send the run back for another pass), and pauses within rewrap. */
  rewrapMs?: number;
  rewrapPausedMs?: number;
  /** Bounded: the first ones met. */
  failedTenants: TenantFailure[];
  graceEndsAt?: number;
  fleet?: { live: number; ready: number; waitingFor: string[] };
  /** Set while the run waits for the fleet or the application. */
  waiting?: Wait;
  /** A dry run's census: rows per KEK label, and how many of a sample the format reads and the KEK opens. */
  census?: { kekId: string; rows: number; sampled: number; readable: number; opens?: number }[];
  /** Verify's check of every row labelled `to` under `to`: how many were checked, and whether it is done. */
  labelCheck?: { checked: number; done: boolean };
  /** The latest proof of the rows labelled `from` before retirement (absent in runs that never reached it). */
  retireProof?: RetireProof;
  /**
   * Decided when the run started (absent in progress carried from a build that did not decide it): whether retiring
   * `from` schedules its destruction after the restore window, and why.
   */
  destruction?: { scheduled: boolean; why: string };
  note?: string;
  /** Set as the run fails (outcome 'failed'), before the failure is thrown: its type, kind and message. */
  failure?: RunFailure;
}

/** Where a proof of the rows labelled `from` stands: every row tried, in parts, before retirement. */
export interface RetireProof extends LabelProof {
  /**
   * before-confirm: before the operator is asked to remove `from` (a target whose application owns that step);
   * before-retire: just before the retirement, which proves what was written since under the registry row's lock.
   */
  stage: 'before-confirm' | 'before-retire';
  done: boolean;
}

export const MAX_FAILED_TENANTS = 50;

export function initialProgress(
  from: string,
  to: string,
  dryRun: boolean,
  now: number,
  target?: string,
): RotationProgress {
  return {
    ...(target !== undefined && { target }),
    from,
    to,
    phase: 'validate',
    outcome: 'running',
    dryRun,
    phases: { validate: { startedAt: now } },
    staleAtStart: 0,
    counters: emptyCounters(),
    passes: 0,
    paused: false,
    pausedMs: 0,
    rewrapMs: 0,
    rewrapPausedMs: 0,
    failedTenants: [],
  };
}

export function enterPhase(progress: RotationProgress, phase: Phase, now: number): RotationProgress {
  const previous = progress.phases[progress.phase];
  const phases = { ...progress.phases };
  let { rewrapMs } = progress;
  if (previous && previous.endedAt === undefined) {
    phases[progress.phase] = { ...previous, endedAt: now };
    if (progress.phase === 'rewrap') rewrapMs = (rewrapMs ?? 0) + (now - previous.startedAt);
  }
  phases[phase] = { startedAt: now, ...(phase === 'done' ? { endedAt: now } : {}) };
  return { ...progress, phase, phases, ...(rewrapMs !== undefined && { rewrapMs }) };
}

/**
 * The progress of a run that failed with `failure`: outcome 'failed' (what the `progress` query answers tctl and
 * `temporal workflow query` from then on), and nothing it waited for or held before, since no command can act now.
 */
export function failedProgress(progress: RotationProgress, failure: RunFailure): RotationProgress {
  return { ...progress, outcome: 'failed', failure, waiting: undefined, paused: false, heldBefore: undefined };
}

/** Adds a finished slice's counters and failures: called exactly once per finished slice. */
export function addSliceResult(
  progress: RotationProgress,
  counters: RewrapCounters,
  failures: TenantFailure[],
): RotationProgress {
  const failedTenants = [...progress.failedTenants];
  for (const failure of failures) {
    if (failedTenants.length >= MAX_FAILED_TENANTS) break;
    if (!failedTenants.some((f) => f.tenantId === failure.tenantId)) failedTenants.push(failure);
  }
  return { ...progress, counters: addCounters(progress.counters, counters), failedTenants };
}

export function setPaused(progress: RotationProgress, paused: boolean, now: number): RotationProgress {
  if (paused === progress.paused) return progress;
  if (paused) return { ...progress, paused, pausedSince: now };
  const pausedFor = progress.pausedSince === undefined ? 0 : now - progress.pausedSince;
  return {
    ...progress,
    paused,
    pausedSince: undefined,
    heldBefore: undefined,
    pausedMs: progress.pausedMs + pausedFor,
    ...(progress.phase === 'rewrap' && { rewrapPausedMs: (progress.rewrapPausedMs ?? 0) + pausedFor }),
  };
}

/** Rows moved off `from`: rewrapped, or relabelled where the value already was under `to`. */
export function rowsMoved(progress: RotationProgress): number {
  return progress.counters.rewrapped + (progress.counters.relabelled ?? 0);
}

/**
 * Share of the rows to move that have moved, 0..100, counted in rows: a run aborted before it moved any row is at 0%
 * whatever phase it ended in. 100 once verify has passed (grace, retire, completed: nothing is left on `from`), and
 * for a run with nothing to move once its rewrap is over (or it found nothing to do).
 */
export function percentComplete(progress: RotationProgress): number {
  const { outcome, phase } = progress;
  if (outcome === 'completed' || outcome === 'nothing-to-do' || phase === 'grace' || phase === 'retire') return 100;
  if (progress.staleAtStart === 0) return progress.phases.rewrap?.endedAt !== undefined ? 100 : 0;
  return Math.min(100, Math.floor((rowsMoved(progress) / progress.staleAtStart) * 1000) / 10);
}

/** Rewrapped DEKs per second of unpaused rewrap time, over every visit of the rewrap phase. */
export function rewrapRate(progress: RotationProgress, now: number): number {
  const rewrap = progress.phases.rewrap;
  if (!rewrap) return 0;
  const inRewrap = progress.phase === 'rewrap';
  const current = inRewrap && rewrap.endedAt === undefined ? now - rewrap.startedAt : 0;
  const pausedNow = inRewrap && progress.pausedSince !== undefined ? now - progress.pausedSince : 0;
  // Progress carried from a build that did not count rewrap time per visit: its one visit, less every pause.
  const legacy = progress.rewrapMs === undefined && progress.rewrapPausedMs === undefined;
  const elapsed = legacy ? (rewrap.endedAt ?? now) - rewrap.startedAt : (progress.rewrapMs ?? 0) + current;
  const paused = legacy
    ? progress.pausedMs + (progress.pausedSince === undefined ? 0 : now - progress.pausedSince)
    : (progress.rewrapPausedMs ?? 0) + pausedNow;
  const seconds = (elapsed - paused) / 1000;
  return seconds > 0 ? progress.counters.rewrapped / seconds : 0;
}

/** Seconds until the rewrap is done at the current rate; undefined when unknown or not rewrapping. */
export function etaSeconds(progress: RotationProgress, now: number): number | undefined {
  if (progress.phase !== 'rewrap' || progress.paused) return undefined;
  const rate = rewrapRate(progress, now);
  if (rate <= 0) return undefined;
  return Math.max(0, progress.staleAtStart - progress.counters.rewrapped) / rate;
}

/** The answer of the `progress` query: the state plus derived figures. */
export interface ProgressReport extends RotationProgress {
  percent: number;
  ratePerSecond: number;
  etaSeconds?: number;
  at: number;
}

export function report(progress: RotationProgress, now: number): ProgressReport {
  return {
    ...progress,
    percent: percentComplete(progress),
    ratePerSecond: Math.round(rewrapRate(progress, now)),
    etaSeconds: etaSeconds(progress, now),
    at: now,
  };
}
