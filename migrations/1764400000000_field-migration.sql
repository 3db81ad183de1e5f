-- Up Migration

-- Progress of `rekey migrate-dek` per slice part, written in the same statement as the batch of values it counts:
-- a retried part resumes from its cursor, and no value (or provisioned DEK) is counted twice or lost. Kept after the
-- run as an audit trail.
CREATE TABLE field_migration_progress (
  progress_key text PRIMARY KEY,
  target text NOT NULL,
  field text NOT NULL,
  cursor text,
  done boolean NOT NULL DEFAULT false,
  migrated bigint NOT NULL DEFAULT 0,
  already_current bigint NOT NULL DEFAULT 0,
  unreadable bigint NOT NULL DEFAULT 0,
  cas_conflicts bigint NOT NULL DEFAULT 0,
  deks_provisioned bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE field_migration_progress;
