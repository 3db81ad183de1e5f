-- Up Migration

-- Retired is not destroyed: a retired KEK may be restored (to decrypt_only) until `restorable_until`, after which a
-- durable step destroys it in its store and marks it `destroyed`. Every restore and destruction is recorded with who
-- asked and why.
ALTER TABLE keks DROP CONSTRAINT keks_state_check;
ALTER TABLE keks ADD CONSTRAINT keks_state_check
  CHECK (state IN ('provisioned', 'active', 'decrypt_only', 'retired', 'destroyed'));
ALTER TABLE keks ADD COLUMN restorable_until timestamptz;
ALTER TABLE keks ADD COLUMN destroyed_at timestamptz;

CREATE TABLE kek_events (
  id bigserial PRIMARY KEY,
  target text COLLATE "C" NOT NULL,
  kek_id text COLLATE "C" NOT NULL,
  event text NOT NULL CHECK (event IN ('restored', 'destroyed')),
  reason text NOT NULL CHECK (reason <> ''),
  actor text NOT NULL,
  at timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (target, kek_id) REFERENCES keks (target, kek_id)
);

-- Down Migration
DROP TABLE kek_events;
ALTER TABLE keks DROP COLUMN destroyed_at;
ALTER TABLE keks DROP COLUMN restorable_until;
ALTER TABLE keks DROP CONSTRAINT keks_state_check;
ALTER TABLE keks ADD CONSTRAINT keks_state_check
  CHECK (state IN ('provisioned', 'active', 'decrypt_only', 'retired'));
