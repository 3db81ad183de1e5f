// The durable step after retirement: a retired KEK keeps its material for its restore window, then is destroyed
// where its store can, unless an operator restored it meanwhile or a row may still need it. The rows still labelled
// with it are proved first (relabelled where they open under a usable KEK); a row that opens under none refuses the
// destruction, which says what to do, keeps the KEK restorable and tries again on a bounded schedule: it never fails
// for good. One workflow per KEK of a keyspace, started by the rotation that retired it and left running when that
// rotation ends (parent close policy ABANDON); its id is made by src/rotation/identity.ts (destroyWorkflowIdOf), and
// its `destroyProgress` query says where it stands.
import { continueAsNew, patched, setHandler, sleep, workflowInfo } from '@temporalio/workflow';
import type { DestroyReport } from '../activities/kek';
import { DEFAULTS } from '../rotation/rotation-input';
import { parseDuration } from '../rotation/durations';
import { destroyRetryDelayMs, initialDestroyProgress, type DestroyProgress } from '../rotation/destroy-progress';
import { startProof, type ProofState } from '../rotation/label-proof';
import { lockedSteps, steps } from './activity-proxies';
import { proveInParts } from './label-proofs';
import { destroyProgressQuery } from './messages';

export interface DestroyKekInput {
  target: string;
  kekId: string;
  restoreWindowMs: number;
  /** The keyspace (`<database id>/<schema.table>`) the step checks; absent in destructions of older builds. */
  keyspace?: string;
}

/**
 * Marks destructions that prove the rows still labelled with the KEK (relabelling those that do not need it) and,
 * refused, wait and try again instead of failing; those that ran a destroy step before it replay their own loop.
 */
export const DESTROY_PROOF_PATCH = 'rekey-destroy-proves-rows-1';

/** What a destruction carries to its next run (continue-as-new keeps its history bounded over months of retries). */
export interface DestroyCarried {
  progress: DestroyProgress;
  /** A proof under way outside the lock, and how many were started (each names its progress rows). */
  proof?: ProofState;
  rounds: number;
}

/** Continue-as-new after this many events (a destroy step and its wait are about ten). */
const MAX_HISTORY_EVENTS = 2_000;

export async function destroyRetiredKek(input: DestroyKekInput, carried?: DestroyCarried): Promise<DestroyReport> {
  const { target, kekId, restoreWindowMs, keyspace } = input;
  // What every step names: the target, and the keyspace its worker must resolve it to (absent from older builds').
  const on = keyspace === undefined ? { target } : { target, keyspace };
  const state: DestroyCarried = carried ?? {
    progress: initialDestroyProgress(target, kekId, Date.now() + restoreWindowMs),
    rounds: 0,
  };
  setHandler(destroyProgressQuery, () => state.progress);
  if (carried === undefined) await sleep(restoreWindowMs);
  if (!patched(DESTROY_PROOF_PATCH)) return destroyAsRecorded(input);
  for (;;) {
    const info = workflowInfo();
    if (info.continueAsNewSuggested || info.historyLength >= MAX_HISTORY_EVENTS) {
      return continueAsNew<typeof destroyRetiredKek>(input, state);
    }
    if (state.proof === undefined) state.proof = startProof(++state.rounds);
    const round = state.proof.round;
    const keyPrefix = `destroy/${info.workflowId}/${info.firstExecutionRunId}`;
    // Outside the lock first: a month of rows labelled with the KEK (Mycelium's gateway labels every new DEK 1) is
    // proved in parts, so that the step under the lock proves only what came after.
    const proof = await proveInParts(
      {
        ...on,
        kekId,
        batchSize: DEFAULTS.batchSize,
        timeBudgetMs: parseDuration(DEFAULTS.sliceTimeBudget)!,
        keyPrefix,
      },
      state.proof,
      {
        beforePart: () => {
          state.progress = { ...state.progress, state: 'proving', detail: `proving the rows labelled '${kekId}'` };
          const now = workflowInfo();
          const long = now.continueAsNewSuggested || now.historyLength >= MAX_HISTORY_EVENTS;
          return Promise.resolve(long ? 'stop' : undefined);
        },
        afterPart: (part) => {
          state.progress = { ...state.progress, relabelled: state.progress.relabelled + part.relabelled };
        },
      },
    );
    if (proof === 'stopped') continue; // continues as new, and goes on from the carried cursor
    state.proof = undefined;
    const retryInMs = destroyRetryDelayMs(state.progress.refusals + 1);
    const report = await lockedSteps.destroyKek({
      ...on,
      kekId,
      progressKey: `${keyPrefix}/round-${round}/locked`,
      reopenForMs: retryInMs,
    });
    state.progress = {
      ...state.progress,
      attempts: state.progress.attempts + 1,
      relabelled: state.progress.relabelled + (report.relabelled ?? 0),
      detail: report.detail,
    };
    if (report.outcome === 'kept' || report.outcome === 'destroyed') {
      state.progress = { ...state.progress, state: report.outcome, nextAttemptAt: undefined };
      return { ...report, relabelled: state.progress.relabelled };
    }
    // Not yet (the timer ran ahead of the database's clock), or refused: the window is open again until the next try.
    const waitMs = report.outcome === 'refused' ? retryInMs : Math.max(report.waitMs ?? 60_000, 1_000);
    state.progress = {
      ...state.progress,
      state: report.outcome === 'refused' ? 'refused' : 'waiting',
      refusals: state.progress.refusals + (report.outcome === 'refused' ? 1 : 0),
      nextAttemptAt: report.retryAt ?? new Date(Date.now() + waitMs).toISOString(),
      ...(report.outcome === 'refused' && { needed: report.needed, neededRows: report.neededRows }),
    };
    await sleep(waitMs);
  }
}

/** The loop of builds before DESTROY_PROOF_PATCH, for the histories they wrote. */
async function destroyAsRecorded({ target, kekId, keyspace }: DestroyKekInput): Promise<DestroyReport> {
  for (;;) {
    // The window is measured by the database's clock: the step says how long is left if this timer ran early.
    const report = await steps.destroyKek({ target, kekId, ...(keyspace !== undefined && { keyspace }) });
    if (report.outcome !== 'not-yet') return report;
    await sleep(Math.max(report.waitMs ?? 60_000, 1_000));
  }
}
