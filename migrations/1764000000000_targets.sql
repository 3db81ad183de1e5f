-- Up Migration

-- Targets: one registry, one fleet and one progress trail per keyspace. Installations made before targets existed
-- rotated rekey's own table only, which is the built-in target 'rekey'.
ALTER TABLE keks ADD COLUMN target text COLLATE "C" NOT NULL DEFAULT 'rekey'
  CHECK (target ~ '^[a-z0-9][a-z0-9_-]{0,62}$');
ALTER TABLE keks ALTER COLUMN target DROP DEFAULT;
ALTER TABLE keks DROP CONSTRAINT keks_pkey;
ALTER TABLE keks ADD PRIMARY KEY (target, kek_id);
DROP INDEX keks_at_most_one_active;
-- At most one active KEK per target, whatever any process does.
CREATE UNIQUE INDEX keks_one_active_per_target ON keks (target) WHERE state = 'active';

ALTER TABLE app_instances ADD COLUMN target text COLLATE "C" NOT NULL DEFAULT 'rekey';
ALTER TABLE app_instances ALTER COLUMN target DROP DEFAULT;
ALTER TABLE app_instances DROP CONSTRAINT app_instances_pkey;
ALTER TABLE app_instances ADD PRIMARY KEY (target, instance_id);

ALTER TABLE rewrap_progress ADD COLUMN target text COLLATE "C" NOT NULL DEFAULT 'rekey';
ALTER TABLE rewrap_progress ALTER COLUMN target DROP DEFAULT;
-- Rows labelled with the old KEK that were in fact wrapped by the new one: their label was corrected.
ALTER TABLE rewrap_progress ADD COLUMN relabelled bigint NOT NULL DEFAULT 0;

-- Down Migration
ALTER TABLE rewrap_progress DROP COLUMN relabelled;
ALTER TABLE rewrap_progress DROP COLUMN target;
ALTER TABLE app_instances DROP CONSTRAINT app_instances_pkey;
ALTER TABLE app_instances DROP COLUMN target;
ALTER TABLE app_instances ADD PRIMARY KEY (instance_id);
DROP INDEX keks_one_active_per_target;
ALTER TABLE keks DROP CONSTRAINT keks_pkey;
ALTER TABLE keks DROP COLUMN target;
ALTER TABLE keks ADD PRIMARY KEY (kek_id);
CREATE UNIQUE INDEX keks_at_most_one_active ON keks ((true)) WHERE state = 'active';
