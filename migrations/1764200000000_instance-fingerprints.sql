-- Up Migration

-- Each application instance announces the fingerprint of every KEK it holds: the fleet gate trusts a key by its
-- fingerprint against the registry's, not by its name (a second `openssl rand` under the same id is another key).
ALTER TABLE app_instances ADD COLUMN kek_fingerprints jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Down Migration
ALTER TABLE app_instances DROP COLUMN kek_fingerprints;
