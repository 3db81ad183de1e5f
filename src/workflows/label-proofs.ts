// A proof of the rows labelled with a KEK, run in parts (one activity each, bounded by a time budget, resumable from
// its heartbeat) until no row is left after its cursor: the rotation's before retire, the destruction's before destroy.
import type { ProofOutcome } from '../activities/kek';
import { addProofs, type LabelProof, type ProofState } from '../rotation/label-proof';
import { proofs } from './activity-proxies';

export interface ProofRequest {
  target: string;
  kekId: string;
  batchSize: number;
  timeBudgetMs: number;
  /** Names each part's progress row: `<prefix>/round-<n>/part-<m>`. */
  keyPrefix: string;
}

export interface ProofHooks {
  /** Before each part: 'stop' ends the proof here (abort, continue-as-new); the state says where to go on. */
  beforePart(): Promise<'stop' | undefined>;
  /** After each part, with what it did (counted once: each part's result arrives once). */
  afterPart(part: ProofOutcome): void;
}

/** Runs the parts of a proof from `state` (carried, updated in place); the sums once done, or 'stopped'. */
export async function proveInParts(
  request: ProofRequest,
  state: ProofState,
  hooks: ProofHooks,
): Promise<LabelProof | 'stopped'> {
  for (;;) {
    if ((await hooks.beforePart()) === 'stop') return 'stopped';
    const part = await proofs.proveLabels({
      target: request.target,
      kekId: request.kekId,
      after: state.cursor,
      batchSize: request.batchSize,
      timeBudgetMs: request.timeBudgetMs,
      progressKey: `${request.keyPrefix}/round-${state.round}/part-${state.part}`,
    });
    state.sum = addProofs(state.sum, part);
    state.cursor = part.cursor;
    state.part += 1;
    hooks.afterPart(part);
    if (part.done) return state.sum;
  }
}
