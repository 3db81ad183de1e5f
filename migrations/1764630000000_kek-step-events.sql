-- Up Migration

-- Every step of a KEK's lifecycle leaves its row in the audit trail, not only restores and destructions: a KEK's
-- trail says when it was registered, made active, superseded by the next one and retired, in the same transaction as
-- the registry's change (issue 26: "each writing the registry and its event").
ALTER TABLE kek_events DROP CONSTRAINT kek_events_event_check;
ALTER TABLE kek_events ADD CONSTRAINT kek_events_event_check
  CHECK (event IN ('registered', 'promoted', 'superseded', 'retired', 'restored', 'destroyed'));

-- Down Migration
DELETE FROM kek_events WHERE event NOT IN ('restored', 'destroyed');
ALTER TABLE kek_events DROP CONSTRAINT kek_events_event_check;
ALTER TABLE kek_events ADD CONSTRAINT kek_events_event_check CHECK (event IN ('restored', 'destroyed'));
