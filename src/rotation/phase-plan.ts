import type { Phase } from './progress';

/** What a run is for: a full rotation, a dry run (counts, writes nothing), a canary (one row, nothing promoted). */
export type RunKind = 'full' | 'dry-run' | 'canary';

/** Which phases each kind of run takes, in order: the one place that decides it. */
export const PHASE_PLAN: Readonly<Record<RunKind, readonly Phase[]>> = {
  full: ['validate', 'provision', 'promote', 'rewrap', 'verify', 'grace', 'retire', 'done'],
  'dry-run': ['validate', 'rewrap', 'done'],
  canary: ['validate', 'provision', 'rewrap', 'verify', 'done'],
};

export function runKind(settings: { dryRun: boolean; tenantId: string | undefined }): RunKind {
  if (settings.dryRun) return 'dry-run';
  return settings.tenantId !== undefined ? 'canary' : 'full';
}

/** The phase after `phase` in a run of this kind. */
export function nextPhase(kind: RunKind, phase: Phase): Phase {
  const plan = PHASE_PLAN[kind];
  const at = plan.indexOf(phase);
  if (at < 0 || at === plan.length - 1) throw new Error(`a ${kind} run has no phase after ${phase}`);
  return plan[at + 1]!;
}
