// What a proof of the rows labelled with a KEK found (before retire, before destroy): plain data and its sums, shared
// by the activity that proves (src/rewrap/still-on.ts) and the workflows that carry it across parts.
import type { TenantFailure } from '../rewrap/counters';

/** A proof's sums over its batches. */
export interface LabelProof {
  /** Rows labelled with the KEK that were tried. */
  tried: number;
  /** Rows that opened under a usable KEK and now carry the active KEK's label (compare-and-swap, counted once). */
  relabelled: number;
  /** Rows that need the KEK: their value opens under it, or under no KEK rekey may use. */
  needed: number;
  /** The first few of those, with why. */
  neededRows: TenantFailure[];
  /** Rows a writer changed while they were proved, on every retry: still labelled with the KEK, for the next proof. */
  contended: number;
}

/** How many rows that need the KEK a proof names. */
export const NAMED_ROWS = 20;

export const emptyProof = (): LabelProof => ({ tried: 0, relabelled: 0, needed: 0, neededRows: [], contended: 0 });

export function addProofs(a: LabelProof, b: LabelProof): LabelProof {
  return {
    tried: a.tried + b.tried,
    relabelled: a.relabelled + b.relabelled,
    needed: a.needed + b.needed,
    neededRows: [...a.neededRows, ...b.neededRows].slice(0, NAMED_ROWS),
    contended: a.contended + b.contended,
  };
}

/** A proof in progress, carried across its parts (and continue-as-new): where it goes on, and what it found so far. */
export interface ProofState {
  /** Names the proof's progress rows: one proof, one round. */
  round: number;
  /** The next part's number. */
  part: number;
  cursor: string;
  sum: LabelProof;
}

export const startProof = (round: number): ProofState => ({ round, part: 0, cursor: '', sum: emptyProof() });

/** `id (why), …` of the rows a proof named. */
export function describeNeeded(proof: LabelProof): string {
  return proof.neededRows.map((row) => `${row.tenantId} (${row.reason})`).join(', ');
}
