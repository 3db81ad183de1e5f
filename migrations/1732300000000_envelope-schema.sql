-- Up Migration

-- The KEK registry: the source of truth for which KEK is current. Key bytes never live here.
CREATE TABLE keks (
  kek_id          text COLLATE "C" PRIMARY KEY CHECK (kek_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
  state           text NOT NULL CHECK (state IN ('provisioned', 'active', 'decrypt_only', 'retired')),
  fingerprint     text NOT NULL,
  provisioned_at  timestamptz NOT NULL DEFAULT now(),
  activated_at    timestamptz,
  decrypt_only_at timestamptz,
  retired_at      timestamptz
);
-- At most one active KEK, whatever the application does.
CREATE UNIQUE INDEX keks_at_most_one_active ON keks ((true)) WHERE state = 'active';

-- One DEK per tenant, wrapped by the KEK named in kek_id. Every write increments version (the CAS token).
-- No foreign key to keks: the rewrap engine rewrites kek_id on millions of rows, and the registry
-- checks (verify, retire) count DEKs per KEK explicitly.
CREATE TABLE tenant_deks (
  tenant_id   text COLLATE "C" PRIMARY KEY CHECK (tenant_id <> ''),
  kek_id      text COLLATE "C" NOT NULL,
  wrapped_dek bytea NOT NULL,
  version     bigint NOT NULL DEFAULT 1,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Stale scans (kek_id = $from, tenant_id > $cursor ORDER BY tenant_id) and stale counts are index-only.
CREATE INDEX tenant_deks_by_kek ON tenant_deks (kek_id, tenant_id);

-- Tenant data encrypted under the tenant's DEK ('v2:' ciphertexts). A rotation never touches it.
CREATE TABLE tenant_records (
  tenant_id  text COLLATE "C" NOT NULL,
  record_id  text COLLATE "C" NOT NULL,
  ciphertext text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, record_id)
);

-- Each application process announces which KEKs it can unwrap with and which one it wraps with.
CREATE TABLE app_instances (
  instance_id    text PRIMARY KEY,
  unwrap_kek_ids text[] NOT NULL,
  wrap_kek_id    text,
  started_at     timestamptz NOT NULL DEFAULT now(),
  last_seen      timestamptz NOT NULL DEFAULT now()
);

-- Rewrap progress per slice, written in the same statement as the batch of DEKs it counts: a slice that is
-- retried resumes from here, and no tenant is counted twice (or lost) whatever fails between a batch and its
-- heartbeat. Kept after the run as an audit trail.
CREATE TABLE rewrap_progress (
  progress_key      text PRIMARY KEY,
  cursor            text COLLATE "C",
  done              boolean NOT NULL DEFAULT false,
  rewrapped         bigint NOT NULL DEFAULT 0,
  already_on_target bigint NOT NULL DEFAULT 0,
  skipped           bigint NOT NULL DEFAULT 0,
  cas_conflicts     bigint NOT NULL DEFAULT 0,
  contended         bigint NOT NULL DEFAULT 0,
  failed            bigint NOT NULL DEFAULT 0,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE rewrap_progress;
DROP TABLE app_instances;
DROP TABLE tenant_records;
DROP TABLE tenant_deks;
DROP TABLE keks;
