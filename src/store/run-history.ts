import type { Pool } from 'pg';

/** The states a run can end in: the run history keeps these (src/rotation/run-status.ts says each in words). */
export type EndedState = 'succeeded' | 'failed' | 'aborted' | 'nothing-to-do' | 'dry-run-done' | 'canary-done';

/** One ended run of a keyspace, as `rekey history` lists it. */
export interface RunRecord {
  workflowId: string;
  /** The first run of the run's continue-as-new chain. */
  runId: string;
  target: string;
  kind: 'rotation' | 'migration';
  from?: string;
  to?: string;
  /** Epoch ms. */
  startedAt: number;
  endedAt: number;
  state: EndedState;
  reason: string;
  rowsTotal: number;
  rowsMoved: number;
  rowsUnreadable: number;
}

interface Row {
  workflow_id: string;
  run_id: string;
  target: string;
  kind: 'rotation' | 'migration';
  from_kek: string | null;
  to_kek: string | null;
  started_at: Date;
  ended_at: Date;
  state: EndedState;
  reason: string;
  rows_total: string;
  rows_moved: string;
  rows_unreadable: string;
}

/** rekey.run_history: every run of every keyspace of this database, kept beyond Temporal's retention. */
export class RunHistory {
  constructor(private readonly db: Pool) {}

  /** Records a run's end; recording the same run again (a retried step) writes the same row. */
  async record(run: RunRecord): Promise<void> {
    await this.db.query(
      `INSERT INTO rekey.run_history (workflow_id, run_id, target, kind, from_kek, to_kek, started_at, ended_at, state,
         reason, rows_total, rows_moved, rows_unreadable)
       VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::double precision / 1000), to_timestamp($8::double precision / 1000),
         $9, $10, $11, $12, $13)
       ON CONFLICT (workflow_id, run_id) DO UPDATE SET
         target = EXCLUDED.target, kind = EXCLUDED.kind, from_kek = EXCLUDED.from_kek, to_kek = EXCLUDED.to_kek,
         started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, state = EXCLUDED.state,
         reason = EXCLUDED.reason, rows_total = EXCLUDED.rows_total, rows_moved = EXCLUDED.rows_moved,
         rows_unreadable = EXCLUDED.rows_unreadable, recorded_at = now()`,
      [
        run.workflowId,
        run.runId,
        run.target,
        run.kind,
        run.from ?? null,
        run.to ?? null,
        run.startedAt,
        run.endedAt,
        run.state,
        run.reason,
        run.rowsTotal,
        run.rowsMoved,
        run.rowsUnreadable,
      ],
    );
  }

  /** A keyspace's runs, newest first (by start). */
  async list(target: string, limit: number): Promise<RunRecord[]> {
    const { rows } = await this.db.query<Row>(
      `SELECT * FROM rekey.run_history WHERE target = $1 ORDER BY started_at DESC, workflow_id, run_id LIMIT $2`,
      [target, limit],
    );
    return rows.map((row) => ({
      workflowId: row.workflow_id,
      runId: row.run_id,
      target: row.target,
      kind: row.kind,
      ...(row.from_kek !== null && { from: row.from_kek }),
      ...(row.to_kek !== null && { to: row.to_kek }),
      startedAt: row.started_at.getTime(),
      endedAt: row.ended_at.getTime(),
      state: row.state,
      reason: row.reason,
      rowsTotal: Number(row.rows_total),
      rowsMoved: Number(row.rows_moved),
      rowsUnreadable: Number(row.rows_unreadable),
    }));
  }
}
