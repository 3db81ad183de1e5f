-- Up Migration

-- Workers announce themselves too: the fleet gate counts a worker only if it holds the new KEK under its registered
-- fingerprint, so a worker with another key under that id (or without it) holds the promotion instead of failing
-- slices halfway through the rewrap.
ALTER TABLE app_instances ADD COLUMN role text NOT NULL DEFAULT 'application' CHECK (role IN ('application', 'worker'));

-- Down Migration
ALTER TABLE app_instances DROP COLUMN role;
