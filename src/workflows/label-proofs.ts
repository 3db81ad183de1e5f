// Work done in parts (one activity each, bounded by a time budget, resumable from its heartbeat) until a part says no
// row is left after its cursor: the proof of the rows labelled with a KEK (the rotation's before retire, the
// destruction's before destroy) and verify's check of the rows labelled `to`. One runner for both, so that their
// commands are the same: each part's activity, in order, and nothing else.
import type { ProofOutcome } from '../activities/kek';
import { addProofs, type LabelProof, type ProofState } from '../rotation/label-proof';
import { proofs } from './activity-proxies';

/** Where a run of parts stands (carried, updated in place): the next part's number, its cursor, the sums so far. */
export interface PartsState<S> {
  part: number;
  cursor: string;
  sum: S;
}

export interface PartHooks<P> {
  /** Before each part: 'stop' ends the run here (abort, continue-as-new); the state says where to go on. */
  beforePart(): Promise<'stop' | undefined>;
  /** After each part, with what it did (counted once: each part's result arrives once). */
  afterPart?(part: P): void;
}

/**
 * Runs parts from `state` until one is done: `part` runs one from the cursor given, `add` adds what it found to the
 * sums. Returns the sums once done, or 'stopped' when `beforePart` stopped it.
 */
export async function runInParts<S, P extends { cursor: string; done: boolean }>(
  state: PartsState<S>,
  part: (cursor: string, number: number) => Promise<P>,
  add: (sum: S, part: P) => S,
  hooks: PartHooks<P>,
): Promise<S | 'stopped'> {
  for (;;) {
    if ((await hooks.beforePart()) === 'stop') return 'stopped';
    const outcome = await part(state.cursor, state.part);
    state.sum = add(state.sum, outcome);
    state.cursor = outcome.cursor;
    state.part += 1;
    hooks.afterPart?.(outcome);
    if (outcome.done) return state.sum;
  }
}

export interface ProofRequest {
  target: string;
  kekId: string;
  batchSize: number;
  timeBudgetMs: number;
  /** Names each part's progress row: `<prefix>/round-<n>/part-<m>`. */
  keyPrefix: string;
}

/** Runs the parts of a proof from `state` (carried, updated in place); the sums once done, or 'stopped'. */
export function proveInParts(
  request: ProofRequest,
  state: ProofState,
  hooks: PartHooks<ProofOutcome>,
): Promise<LabelProof | 'stopped'> {
  return runInParts(
    state,
    (after, part) =>
      proofs.proveLabels({
        target: request.target,
        kekId: request.kekId,
        after,
        batchSize: request.batchSize,
        timeBudgetMs: request.timeBudgetMs,
        progressKey: `${request.keyPrefix}/round-${state.round}/part-${part}`,
      }),
    addProofs,
    hooks,
  );
}
