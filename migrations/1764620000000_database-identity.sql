-- Up Migration

-- The database's identity: a random UUID made once, here, and never changed by rekey. A keyspace (what a rotation
-- rotates, and what a key store belongs to) is this identity and a table; the workflow ids of its rotations,
-- migrations and destructions carry its first 12 hex digits, so that two databases with a target of the same name
-- never share a workflow in one Temporal namespace. A database restored from a backup keeps it (it is the same
-- keyspace); a copy that lives beside its original gets a new one (README, "Upgrading and deploying").
CREATE TABLE database_identity (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO database_identity DEFAULT VALUES;

-- Down Migration
DROP TABLE database_identity;
