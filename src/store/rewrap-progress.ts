import type { Pool, PoolClient } from 'pg';
import { emptyCounters, type RewrapCounters } from '../rewrap/counters';

/**
 * Rewrap progress per slice part (rekey.rewrap_progress), written in the same statement as the batch of rows it
 * counts (TargetStore.compareAndSwap): a part that is retried resumes from here, and no row is counted twice or lost.
 * Kept after the run as an audit trail.
 */
export interface ProgressRecord {
  cursor: string | null;
  done: boolean;
  counters: RewrapCounters;
}

interface ProgressRow {
  cursor: string | null;
  done: boolean;
  rewrapped: string;
  relabelled: string;
  already_on_target: string;
  skipped: string;
  cas_conflicts: string;
  contended: string;
  failed: string;
}

export async function readProgress(
  client: Pool | PoolClient,
  progressKey: string,
): Promise<ProgressRecord | undefined> {
  const { rows } = await client.query<ProgressRow>('SELECT * FROM rekey.rewrap_progress WHERE progress_key = $1', [
    progressKey,
  ]);
  const row = rows[0];
  if (!row) return undefined;
  return {
    cursor: row.cursor,
    done: row.done,
    counters: {
      ...emptyCounters(),
      rewrapped: Number(row.rewrapped),
      relabelled: Number(row.relabelled),
      alreadyOnTarget: Number(row.already_on_target),
      skipped: Number(row.skipped),
      casConflicts: Number(row.cas_conflicts),
      contended: Number(row.contended),
      failed: Number(row.failed),
    },
  };
}

export async function createProgress(
  client: Pool | PoolClient,
  target: string,
  progressKey: string,
  cursor: string,
  initial: RewrapCounters,
): Promise<void> {
  await client.query(
    `INSERT INTO rekey.rewrap_progress (target, progress_key, cursor, already_on_target, skipped)
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (progress_key) DO NOTHING`,
    [target, progressKey, cursor, initial.alreadyOnTarget, initial.skipped],
  );
}

/** Counts that do not come with a batch's writes: rows moved away meanwhile, rows left contended. */
export async function addToProgress(
  client: Pool | PoolClient,
  progressKey: string,
  delta: Pick<RewrapCounters, 'alreadyOnTarget' | 'skipped' | 'contended'>,
): Promise<void> {
  await client.query(
    `UPDATE rekey.rewrap_progress SET already_on_target = already_on_target + $2, skipped = skipped + $3,
       contended = contended + $4, updated_at = now() WHERE progress_key = $1`,
    [progressKey, delta.alreadyOnTarget, delta.skipped, delta.contended],
  );
}

export async function markProgressDone(client: Pool | PoolClient, progressKey: string, cursor: string): Promise<void> {
  await client.query('UPDATE rekey.rewrap_progress SET cursor = $2, done = true WHERE progress_key = $1', [
    progressKey,
    cursor,
  ]);
}
