// The last step of every rotation and migration: its end, in the one status (src/rotation/run-status.ts), into
// rekey's run history (rekey.run_history), which `rekey history` and the admin API list long after Temporal's
// retention has dropped the run.
import { isCancellation, log, patched, workflowInfo } from '@temporalio/workflow';
import type { RunStatus } from '../rotation/run-status';
import type { EndedState, RunRecord } from '../store/run-history';
import { bookkeeping } from './activity-proxies';

/** Marks histories whose end is recorded in the run history: older ones end without that step. */
export const HISTORY_PATCH = 'rekey-status-run-history-1';

export interface RunEnd {
  target: string;
  /** The keyspace the run belongs to (absent in runs of builds before keyspaces): recorded only in its database. */
  keyspace?: string;
  kind: RunRecord['kind'];
  from?: string;
  to?: string;
  startedAt: number;
  status: RunStatus;
  rowsUnreadable: number;
}

/** Records how the run ended. Never changes the outcome: a history that cannot be written is logged, not fatal. */
export async function recordEnd(end: RunEnd): Promise<void> {
  if (!patched(HISTORY_PATCH)) return;
  const info = workflowInfo();
  const { status } = end;
  try {
    const answer = await bookkeeping.recordRun({
      workflowId: info.workflowId,
      runId: info.firstExecutionRunId,
      target: end.target,
      ...(end.keyspace !== undefined && { keyspace: end.keyspace }),
      kind: end.kind,
      ...(end.from !== undefined && { from: end.from }),
      ...(end.to !== undefined && { to: end.to }),
      startedAt: end.startedAt,
      endedAt: Date.now(),
      state: status.ended ? (status.state as EndedState) : 'failed',
      reason: status.reason,
      rowsTotal: status.rows.total,
      rowsMoved: status.rows.moved,
      rowsUnreadable: end.rowsUnreadable,
    });
    if (!answer.recorded) log.warn('the run is not in rekey.run_history', { why: answer.why });
  } catch (err) {
    if (isCancellation(err)) throw err;
    log.warn('the run is not in rekey.run_history: recording it failed', { error: (err as Error).message });
  }
}
