// The targets that need no configuration file: rekey's own table, and the two systems rekey was written to take over,
// with their real table and column names (../shared/seed-systems.md).
import {
  MYCELIUM_DEK_FORMAT,
  MYCELIUM_V1_FIELD_FORMAT,
  myceliumV2FieldFormat,
  REKEY_DEK_FORMAT,
  TALOS_SECRET_FORMAT,
} from '../codec/formats';
import { BUILTIN_TARGET } from './builtin';
import type { EncryptedField, TargetDefinition } from './target';

/** rekey's own `rekey.tenant_deks`, written by the TenantCrypto API, which reads the registry for the current KEK. */
export const REKEY_PRESET: TargetDefinition = {
  name: BUILTIN_TARGET,
  database: { urlEnv: 'DATABASE_URL' },
  table: { schema: 'rekey', name: 'tenant_deks' },
  id: 'tenant_id',
  label: { column: 'kek_id', kind: 'text' },
  cas: { kind: 'version', column: 'version' },
  setOnWrite: { updated_at: 'now' },
  format: REKEY_DEK_FORMAT,
  keys: { provider: 'default' },
  currentKek: { owner: 'registry' },
  noun: 'DEK',
};

/** Mycelium's system tenant: its DEK encrypts system-level secrets (TOTP, webhook secrets). */
export const MYCELIUM_SYSTEM_TENANT = '00000000-0000-0000-0000-000000000000';

function myceliumField(
  field: Pick<EncryptedField, 'name' | 'group' | 'column' | 'path' | 'tenant'> & { table: string },
): EncryptedField {
  return {
    ...field,
    table: { schema: 'public', name: field.table },
    id: 'id',
    legacy: MYCELIUM_V1_FIELD_FORMAT,
    current: myceliumV2FieldFormat(field.name),
  };
}

/**
 * Mycelium's encryption inventory, each field with the DEK its running gateway decrypts it with: TOTP secrets and
 * webhook secrets under the system tenant's (whatever Mycelium's own migrate-dek does), Telegram values under the
 * tenant's own.
 */
export const MYCELIUM_FIELDS: EncryptedField[] = [
  myceliumField({
    name: 'totp_secret',
    group: 'TOTP',
    table: 'user',
    column: 'mfa',
    path: ['totp', 'enabled', 'secret'],
    tenant: { fixed: MYCELIUM_SYSTEM_TENANT },
  }),
  myceliumField({
    name: 'telegram_bot_token',
    group: 'Telegram',
    table: 'tenant',
    column: 'meta',
    path: ['telegram_bot_token'],
    tenant: { column: 'id' },
  }),
  myceliumField({
    name: 'telegram_webhook_secret',
    group: 'Telegram',
    table: 'tenant',
    column: 'meta',
    path: ['telegram_webhook_secret'],
    tenant: { column: 'id' },
  }),
  ...(['authorizationHeader', 'queryParameter'] as const).map((holder) =>
    myceliumField({
      name: 'http_secret',
      group: 'Webhook secrets',
      table: 'webhook',
      column: 'secret',
      path: [holder, 'token'],
      tenant: { fixed: MYCELIUM_SYSTEM_TENANT },
    }),
  ),
];

/**
 * Mycelium's per-tenant DEKs: `tenant.encrypted_dek` ('v2:' + base64, bound to the tenant UUID), labelled with the
 * integer `kek_version`; no row-version column, so a write compares the stored value. KEKs from token_secret UUIDs.
 * The gateway's settings choose the current token_secret.
 */
export const MYCELIUM_PRESET: TargetDefinition = {
  name: 'mycelium',
  database: { urlEnv: 'DATABASE_URL' },
  table: { schema: 'public', name: 'tenant' },
  id: 'id',
  label: { column: 'kek_version', kind: 'generation' },
  cas: { kind: 'stored-value' },
  setOnWrite: {},
  format: MYCELIUM_DEK_FORMAT,
  keys: {
    provider: 'mycelium-token-secret',
    current: { env: 'MYC_TOKEN_SECRET' },
    old: { env: 'MYC_OLD_TOKEN_SECRET' },
  },
  currentKek: {
    owner: 'application',
    promote: {
      instructions:
        "set the new token_secret (generation {to}) in every gateway's settings (or Vault) and restart them",
    },
    retire: {
      instructions:
        'discard the old token_secret (generation {from}) from Vault, the environment and MYC_OLD_TOKEN_SECRET',
    },
  },
  noun: 'DEK',
  fields: MYCELIUM_FIELDS,
};

/**
 * Talos's secrets, each encrypted directly by a KEK: three base64url columns in `secrets`, labelled with `key_id`,
 * versioned by `version`; a write also sets `aad` and `rotated_at`, as Talos's own rotation does. KEKs from
 * `TALOS_KEK_<id>`; the gateway's `TALOS_CURRENT_KEK_ID` (and a restart) chooses the current one.
 */
export const TALOS_PRESET: TargetDefinition = {
  name: 'talos',
  database: { urlEnv: 'DATABASE_URL' },
  table: { schema: 'public', name: 'secrets' },
  id: 'id',
  label: { column: 'key_id', kind: 'text' },
  cas: { kind: 'version', column: 'version' },
  setOnWrite: { rotated_at: 'now' },
  format: TALOS_SECRET_FORMAT,
  keys: { provider: 'env', prefix: 'TALOS', idPattern: '^[a-z0-9][a-z0-9_-]{0,31}$' },
  currentKek: {
    owner: 'application',
    currentKekEnv: 'TALOS_CURRENT_KEK_ID',
    promote: {
      instructions: 'set TALOS_CURRENT_KEK_ID={to} on every gateway and restart it',
      probe: { kind: 'rows-written', timestampColumn: 'updated_at' },
    },
    retire: {
      instructions: "remove TALOS_KEK_{from} from every gateway's environment and restart it",
    },
  },
  noun: 'secret',
};

export const PRESETS: Readonly<Record<string, TargetDefinition>> = {
  [REKEY_PRESET.name]: REKEY_PRESET,
  [MYCELIUM_PRESET.name]: MYCELIUM_PRESET,
  [TALOS_PRESET.name]: TALOS_PRESET,
};

/**
 * The columns of Mycelium's and Talos's tables as their own migrations declare them (../shared/seed-systems.md), by
 * `schema.table.column`: the DDL first contact prints for a table or column that is missing.
 */
export const EXPECTED_COLUMNS: Readonly<Record<string, string>> = {
  'public.tenant.id': 'uuid',
  'public.tenant.encrypted_dek': 'text',
  'public.tenant.kek_version': 'integer NOT NULL DEFAULT 1',
  'public.tenant.meta': "jsonb NOT NULL DEFAULT '{}'::jsonb",
  'public.user.id': 'uuid',
  'public.user.mfa': 'jsonb',
  'public.webhook.id': 'uuid',
  'public.webhook.secret': 'jsonb',
  'public.secrets.id': 'varchar(36)',
  'public.secrets.name': 'varchar(255) NOT NULL UNIQUE',
  'public.secrets.ciphertext': 'text NOT NULL',
  'public.secrets.nonce': 'varchar(64) NOT NULL',
  'public.secrets.tag': 'varchar(64) NOT NULL',
  'public.secrets.aad': 'text',
  'public.secrets.key_id': 'varchar(64) NOT NULL',
  'public.secrets.version': 'integer NOT NULL DEFAULT 1',
  'public.secrets.rotated_at': 'timestamptz',
  'public.secrets.updated_at': 'timestamptz NOT NULL DEFAULT now()',
};
