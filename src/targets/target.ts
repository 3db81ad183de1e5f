// A target is one keyspace that rekey rotates: the table where wrapped keys (or secrets encrypted directly by a KEK)
// live, how rows name their KEK, how a write is made safe, how values are stored, where the KEKs come from, and who
// decides which KEK is current. Targets come from presets (src/targets/presets.ts) or a configuration file
// (src/targets/config.ts); both produce this shape.
import type { SealedFormat } from '../codec/sealed-format';

export const TARGET_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
/** A KEK generation (Mycelium's kek_version): 1, 2, … */
export const GENERATION = /^[1-9][0-9]{0,8}$/;
export const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export interface TableRef {
  schema: string;
  name: string;
}

/** How a row names the KEK that wrapped it. */
export type KekLabel =
  | { column: string; kind: 'text' }
  /** An integer generation (Mycelium's kek_version); generation N is KEK id 'N'. */
  | { column: string; kind: 'generation' };

/** What makes a write a compare-and-swap. */
export type CasToken =
  /** A column every write increments (Talos `version`, rekey `version`). */
  | { kind: 'version'; column: string }
  /** No such column: the stored value itself (`WHERE encrypted_dek = $old`). */
  | { kind: 'stored-value' };

/** Where a target's KEKs come from, in the worker (and the admin API, for ids and fingerprints). */
export type KeySourceSpec =
  /** The worker's own provider (REKEY_KEY_PROVIDER: env REKEY_KEK_<id>, or the file keyring). */
  | { provider: 'default' }
  /** `<PREFIX>_KEK_<id>` variables and `<PREFIX>_CURRENT_KEK_ID`; ids must match `idPattern`. */
  | { provider: 'env'; prefix: string; idPattern?: string }
  /** A keyring file. */
  | { provider: 'file'; file?: string; fileEnv?: string }
  /**
   * Mycelium: KEK = SHA-256 of a token_secret UUID's 16 bytes. The current secret and, during a rotation, the old
   * one, each from an environment variable, a file or a Vault KV v2 secret.
   */
  | {
      provider: 'mycelium-token-secret';
      current: SecretSource;
      old: SecretSource;
    };

/**
 * Where a secret is read: an environment variable, a file, or a field of a Vault KV v2 secret (`mount` default
 * `secret`; the latest version, or `version`), read with the process's VAULT_ADDR, VAULT_TOKEN and VAULT_NAMESPACE.
 */
export type SecretSource =
  { env: string } | { file: string } | { vault: { path: string; field: string; mount?: string; version?: number } };

/** Evidence that the application did what an operator was asked to do. */
export type Probe =
  /** GET a JSON document (Talos's kek-status); `path` is dotted; bearer token from an environment variable. */
  | { kind: 'http'; url: string; path: string; tokenEnv?: string }
  /** A row written by the application since the rotation began, carrying the new KEK (promotion only). */
  | { kind: 'rows-written'; timestampColumn: string };

export interface ApplicationStep {
  /** What the operator must do, with {from} and {to} replaced; the run then waits for a confirmation or a probe. */
  instructions: string;
  probe?: Probe;
}

/**
 * Who decides which KEK new writes use. 'registry': the application reads rekey's registry (the TenantCrypto API),
 * so rekey promotes and retires by itself once the fleet is ready. 'application': the application's own configuration
 * decides (an env variable and a restart; a settings file), so promotion and retirement are waits for evidence.
 */
export type CurrentKekOwner =
  | { owner: 'registry' }
  | {
      owner: 'application';
      promote: ApplicationStep;
      retire: ApplicationStep;
      /** The environment variable that, in rekey's own environment, names the application's current KEK. */
      currentKekEnv?: string;
    };

/**
 * A value an application encrypts with a tenant's DEK (Mycelium's "encryption inventory"), which may still be in the
 * legacy form encrypted directly by the KEK. `rekey migrate-dek` moves legacy values to the current form.
 */
export interface EncryptedField {
  /** The field's name: its associated-data label (Mycelium: `totp_secret`), and how messages name it. */
  name: string;
  /** The group its count is reported under: `TOTP` gives "TOTP fields migrated". */
  group: string;
  table: TableRef;
  /** The row id column (the migration walks it in order). */
  id: string;
  column: string;
  /** Keys into a jsonb column (`['totp', 'enabled', 'secret']`); omitted when the column holds the value itself. */
  path?: string[];
  /** Whose DEK encrypts it: the tenant a column names (a row of the target's table), or the fixed system tenant. */
  tenant: { column: string } | { fixed: string };
  /**
   * Both forms, over a virtual row of two columns: `value` (the field's text) and `tenant` (the tenant id). `legacy`
   * is sealed by the KEK itself; `current` by the tenant's DEK.
   */
  legacy: SealedFormat;
  current: SealedFormat;
}

export interface TargetDefinition {
  name: string;
  /** Where the target's table is; the connection string, or the variable holding it (default DATABASE_URL). */
  database: { url?: string; urlEnv?: string };
  table: TableRef;
  /** The row id column (the keyset rewrap walks it in order). */
  id: string;
  label: KekLabel;
  cas: CasToken;
  /** Columns set on every write rekey makes, e.g. `rotated_at`: now(). */
  setOnWrite: Record<string, 'now'>;
  format: SealedFormat;
  keys: KeySourceSpec;
  currentKek: CurrentKekOwner;
  /** Human name of what a row holds, for messages and counters: 'DEK' or 'secret'. */
  noun: string;
  /** Values encrypted under the DEKs of this target's rows (empty: none that rekey migrates). */
  fields?: EncryptedField[];
}

/** The id a row's label means: text as it is, generation N as 'N'. */
export function kekIdOfLabel(label: unknown): string {
  return String(label);
}

export function describeTable(table: TableRef): string {
  return `${table.schema}.${table.name}`;
}

/**
 * The KEK a deployment's own configuration names as current for a target, if it names one: the target's
 * `currentKekEnv`, else `<PREFIX>_CURRENT_KEK_ID` of its env key source (REKEY_ENV_PREFIX for the default one).
 * An empty variable means unset.
 */
export function configuredCurrentKekId(definition: TargetDefinition, env: NodeJS.ProcessEnv): string | undefined {
  const owner = definition.currentKek;
  let variable: string | undefined;
  if (owner.owner === 'application' && owner.currentKekEnv) variable = owner.currentKekEnv;
  else if (definition.keys.provider === 'env') variable = `${definition.keys.prefix}_CURRENT_KEK_ID`;
  else if (definition.keys.provider === 'default') variable = `${env.REKEY_ENV_PREFIX || 'REKEY'}_CURRENT_KEK_ID`;
  return variable === undefined ? undefined : env[variable]?.trim() || undefined;
}
