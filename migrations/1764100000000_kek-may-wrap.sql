-- Up Migration

-- The database itself refuses a DEK written under a KEK that may not wrap, whoever writes it: an application
-- instance whose cached idea of the current KEK is stale, a request that stalled across a retirement, a rewrap
-- resumed after another rotation retired its target. A KEK may wrap while it is active; a provisioned KEK only
-- for a session that says so (rekey's canary, which sets rekey.wrap_provisioned to that KEK's id).
--
-- The check takes a shared lock on the registry rows it reads, and retirement (and promotion) lock them
-- exclusively: a write either commits before the retirement counts what is still on the KEK (and the retirement
-- refuses), or waits for it and is then refused. One statement-level check per statement, over the rows it wrote.
CREATE FUNCTION refuse_dek_under_kek_that_may_not_wrap() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
  named text[];
  allowed text[] := '{}';
  kek record;
  unknown text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    named := ARRAY(SELECT DISTINCT n.kek_id FROM new_rows n);
  ELSE
    -- Rows whose wrapped DEK and KEK are unchanged were not written under anything.
    named := ARRAY(
      SELECT DISTINCT n.kek_id FROM new_rows n
      WHERE NOT EXISTS (SELECT 1 FROM old_rows o
                        WHERE o.tenant_id = n.tenant_id AND o.kek_id = n.kek_id AND o.wrapped_dek = n.wrapped_dek));
  END IF;
  IF cardinality(named) = 0 THEN
    RETURN NULL;
  END IF;
  FOR kek IN
    SELECT k.kek_id, k.state FROM rekey.keks k
    WHERE k.target = 'rekey' AND k.kek_id = ANY (named) ORDER BY k.kek_id FOR SHARE
  LOOP
    IF kek.state = 'active'
       OR (kek.state = 'provisioned' AND current_setting('rekey.wrap_provisioned', true) = kek.kek_id) THEN
      allowed := allowed || kek.kek_id;
    ELSE
      RAISE EXCEPTION 'KEK ''%'' may not wrap a DEK: it is %', kek.kek_id, kek.state
        USING ERRCODE = 'RK001', DETAIL = kek.state, COLUMN = kek.kek_id, HINT = 'wrap with the active KEK (re-read it from rekey.keks and retry)';
    END IF;
  END LOOP;
  IF cardinality(allowed) < cardinality(named) THEN
    unknown := (SELECT min(x) FROM unnest(named) x WHERE NOT x = ANY (allowed));
    RAISE EXCEPTION 'KEK ''%'' may not wrap a DEK: rekey''s registry does not know it', unknown
      USING ERRCODE = 'RK001', COLUMN = unknown, HINT = 'wrap with the active KEK (re-read it from rekey.keks and retry)';
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER tenant_deks_insert_kek_may_wrap AFTER INSERT ON tenant_deks
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION refuse_dek_under_kek_that_may_not_wrap();
CREATE TRIGGER tenant_deks_update_kek_may_wrap AFTER UPDATE ON tenant_deks
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_dek_under_kek_that_may_not_wrap();

-- Down Migration
DROP TRIGGER tenant_deks_update_kek_may_wrap ON tenant_deks;
DROP TRIGGER tenant_deks_insert_kek_may_wrap ON tenant_deks;
DROP FUNCTION refuse_dek_under_kek_that_may_not_wrap();
