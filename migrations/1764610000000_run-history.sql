-- Up Migration

-- The history of a keyspace's rotations and migrations, one row per run, written by the run's last step when it
-- ends (succeeded, failed, aborted, nothing to do, dry run, canary). Temporal keeps a closed run only for its
-- namespace's retention (days); this table keeps what `rekey history` lists for as long as the keyspace lives.
CREATE TABLE run_history (
  workflow_id text COLLATE "C" NOT NULL,
  -- The first run of the run's continue-as-new chain: with the workflow id, the op id (`<workflow id>@<run id>`).
  run_id text COLLATE "C" NOT NULL,
  target text COLLATE "C" NOT NULL,
  kind text NOT NULL CHECK (kind IN ('rotation', 'migration')),
  from_kek text,
  to_kek text,
  started_at timestamptz NOT NULL,
  ended_at timestamptz NOT NULL,
  -- The one status (src/rotation/run-status.ts) it ended in, and its reason.
  state text NOT NULL CHECK (state IN ('succeeded', 'failed', 'aborted', 'nothing-to-do', 'dry-run-done', 'canary-done')),
  reason text NOT NULL,
  -- Rows (values, for a migration) there were to move, moved, and found unreadable.
  rows_total bigint NOT NULL DEFAULT 0,
  rows_moved bigint NOT NULL DEFAULT 0,
  rows_unreadable bigint NOT NULL DEFAULT 0,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (workflow_id, run_id)
);
CREATE INDEX run_history_by_target ON run_history (target, started_at DESC);

-- Down Migration
DROP TABLE run_history;
