// The targets configuration file (REKEY_CONFIG): YAML or JSON, checked when a process starts; every error names the
// key and says what to fix. docs/12-configuration-file.md points at a complete example (examples/rekey.yaml).
import fs from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { compileFormat, ENCODINGS, type SealedFormat } from '../codec/sealed-format';
import type { StoreName } from '../keyring/driver';
import { envStoreName } from '../keyring/drivers/env';
import { fileStoreName } from '../keyring/drivers/file';
import { detectKeyStore, PROCESS_STORES } from '../keyring/stores';
import { PRESETS } from './presets';
import {
  describeTable,
  IDENTIFIER,
  TARGET_NAME,
  type CasToken,
  type EncryptedField,
  type KekLabel,
  type SecretSource,
  type TableRef,
  type TargetDefinition,
} from './target';
import { FormatError, TargetConfigError } from '../errors';
import { keyProviderOf } from '../config';

const identifier = z.string().regex(IDENTIFIER, 'must be a plain SQL identifier (letters, digits, _; at most 63)');
const tableName = z
  .string()
  .regex(
    /^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$/,
    "must be 'table' or 'schema.table' with plain SQL identifiers",
  );
const encoding = z.enum(ENCODINGS as [string, ...string[]], {
  error: `must be one of ${ENCODINGS.join(', ')}`,
});
const envName = z.string().regex(/^[A-Z_][A-Z0-9_]*$/, 'must be an environment variable name (A-Z, 0-9, _)');

const aadPart = z.union([
  z.strictObject({ text: z.string() }),
  z.strictObject({ hex: z.string().regex(/^(?:[0-9a-fA-F]{2})*$/, 'must be hex bytes') }),
  z.strictObject({ column: identifier, as: z.enum(['utf8', 'uuid']).optional(), lengthPrefix: z.boolean().optional() }),
  z.strictObject({ kekId: z.literal(true), lengthPrefix: z.boolean().optional() }),
]);

/** A sealed format; `emptyRecipe` admits a recipe of no parts (no associated data: Mycelium's v1 field values). */
const sealedFormat = (emptyRecipe: boolean) =>
  z.strictObject({
    value: z.discriminatedUnion('kind', [
      z.strictObject({
        kind: z.literal('combined'),
        column: identifier,
        encoding,
        prefix: z.string().optional(),
      }),
      z.strictObject({
        kind: z.literal('split'),
        ciphertext: identifier,
        nonce: identifier,
        tag: identifier,
        encoding,
      }),
    ]),
    aad: z.strictObject({
      read: z
        .array(emptyRecipe ? z.array(aadPart) : z.array(aadPart).min(1, 'a recipe needs at least one part'))
        .min(1, 'needs at least one recipe'),
      store: z.strictObject({ column: identifier, encoding }).optional(),
    }),
    plaintextBytes: z.number().int().positive().optional(),
  });
const format = sealedFormat(false);

/** An encrypted field the migration moves from `legacy` (under the KEK) to `current` (under a tenant's DEK). */
const field = z.strictObject({
  name: z.string().min(1).max(63),
  group: z.string().min(1).max(63).optional(),
  table: tableName,
  id: identifier,
  column: identifier,
  path: z.array(z.string().min(1)).min(1).optional(),
  tenant: z.union([
    z.strictObject({ column: identifier }),
    z.strictObject({ fixed: z.string().min(1, 'must be the id of the tenant whose DEK it uses') }),
  ]),
  legacy: sealedFormat(true),
  current: format,
});

const vaultPathText = z
  .string()
  .regex(
    /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/,
    "must be a Vault path such as 'mycelium/token_secret' (no leading '/')",
  );
const secretSource = z.union([
  z.strictObject({ env: envName }),
  z.strictObject({ file: z.string().min(1) }),
  z.strictObject({
    vault: z.strictObject({
      path: vaultPathText,
      field: z.string().min(1),
      mount: vaultPathText.optional(),
      version: z.number().int().positive().optional(),
    }),
  }),
]);

const keys = z.discriminatedUnion('provider', [
  z.strictObject({ provider: z.literal('default') }),
  z.strictObject({
    provider: z.literal('env'),
    prefix: z.string().regex(/^[A-Z][A-Z0-9_]*$/, 'must be upper-case letters, digits and _ (e.g. TALOS)'),
    idPattern: z.string().optional(),
  }),
  z.strictObject({ provider: z.literal('file'), file: z.string().min(1).optional(), fileEnv: envName.optional() }),
  z.strictObject({ provider: z.literal('mycelium-token-secret'), current: secretSource, old: secretSource }),
]);

const probe = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('http'),
    url: z.url({ error: 'must be an http(s) URL' }),
    path: z.string().min(1),
    tokenEnv: envName.optional(),
  }),
  z.strictObject({ kind: z.literal('rows-written'), timestampColumn: identifier }),
]);
const step = z.strictObject({ instructions: z.string().min(1), probe: probe.optional() });

const currentKek = z.discriminatedUnion('owner', [
  z.strictObject({ owner: z.literal('registry') }),
  z.strictObject({ owner: z.literal('application'), promote: step, retire: step, currentKekEnv: envName.optional() }),
]);

const target = z.strictObject({
  preset: z.enum(Object.keys(PRESETS) as [string, ...string[]]).optional(),
  database: z
    .strictObject({
      url: z
        .string()
        .regex(/^postgres(ql)?:\/\//, 'must start with postgres://')
        .optional(),
      urlEnv: envName.optional(),
    })
    .optional(),
  table: tableName.optional(),
  id: identifier.optional(),
  kekLabel: z.strictObject({ column: identifier, generation: z.boolean().optional() }).optional(),
  cas: z
    .union([z.strictObject({ versionColumn: identifier }), z.strictObject({ storedValue: z.literal(true) })])
    .optional(),
  setOnWrite: z.record(identifier, z.literal('now', { error: "the only value is 'now'" })).optional(),
  format: format.optional(),
  keys: keys.optional(),
  currentKek: currentKek.optional(),
  noun: z.string().min(1).optional(),
  fields: z.array(field).optional(),
});

const file = z.strictObject({
  /** The target a command uses when none is named (default: rekey's own). */
  defaultTarget: z.string().optional(),
  targets: z.record(z.string().regex(TARGET_NAME, 'a target name is lower-case letters, digits, - and _'), target),
});

type TargetEntry = z.infer<typeof target>;

export interface TargetsConfig {
  defaultTarget: string;
  targets: ReadonlyMap<string, TargetDefinition>;
}

function problem(source: string, issue: z.core.$ZodIssue): string {
  const key = issue.path.map(String).join('.');
  // A bad record key (a target name) carries the key's own issue inside.
  const message = issue.code === 'invalid_key' ? (issue.issues[0]?.message ?? issue.message) : issue.message;
  return `${source}: ${key || '(top level)'}: ${message}`;
}

function definitionOf(name: string, entry: TargetEntry, source: string): TargetDefinition {
  const base = entry.preset !== undefined ? PRESETS[entry.preset] : PRESETS[name];
  const missing = (key: string) =>
    new TargetConfigError(
      `${source}: targets.${name}.${key} is required (or start from a preset: preset: ${Object.keys(PRESETS).join(' | ')})`,
    );
  const table = entry.table ?? (base ? `${base.table.schema}.${base.table.name}` : undefined);
  if (table === undefined) throw missing('table');
  const tableRef = splitTable(table);
  const id = entry.id ?? base?.id;
  if (id === undefined) throw missing('id');
  const label: KekLabel | undefined = entry.kekLabel
    ? { column: entry.kekLabel.column, kind: entry.kekLabel.generation ? 'generation' : 'text' }
    : base?.label;
  if (label === undefined) throw missing('kekLabel');
  const cas: CasToken | undefined = entry.cas
    ? 'versionColumn' in entry.cas
      ? { kind: 'version', column: entry.cas.versionColumn }
      : { kind: 'stored-value' }
    : base?.cas;
  if (cas === undefined) throw missing('cas');
  const sealed = (entry.format as SealedFormat | undefined) ?? base?.format;
  if (sealed === undefined) throw missing('format');
  try {
    compileFormat(sealed);
  } catch (err) {
    if (err instanceof FormatError) throw new TargetConfigError(`${source}: targets.${name}.format: ${err.message}`);
    throw err;
  }
  const fields = entry.fields
    ? entry.fields.map((f, i) => fieldOf(f, `${source}: targets.${name}.fields.${i}`))
    : base?.fields;
  if (entry.keys?.provider === 'env' && entry.keys.idPattern !== undefined) {
    try {
      new RegExp(entry.keys.idPattern);
    } catch {
      throw new TargetConfigError(`${source}: targets.${name}.keys.idPattern is not a regular expression`);
    }
  }
  return {
    name,
    database: entry.database ?? base?.database ?? { urlEnv: 'DATABASE_URL' },
    table: tableRef,
    id,
    label,
    cas,
    setOnWrite: entry.setOnWrite ?? base?.setOnWrite ?? {},
    format: sealed,
    keys: entry.keys ?? base?.keys ?? { provider: 'default' },
    currentKek: entry.currentKek ?? base?.currentKek ?? { owner: 'registry' },
    noun: entry.noun ?? base?.noun ?? 'key',
    ...(fields && { fields }),
  };
}

function splitTable(table: string): TableRef {
  const [schema, name] = table.includes('.') ? table.split('.') : ['public', table];
  return { schema: schema!, name: name! };
}

function fieldOf(entry: z.infer<typeof field>, where: string): EncryptedField {
  const forms = { legacy: entry.legacy as SealedFormat, current: entry.current as SealedFormat };
  for (const [form, sealed] of Object.entries(forms)) {
    if (sealed.value.kind !== 'combined' || sealed.value.column !== 'value') {
      throw new TargetConfigError(
        `${where}.${form}.value: a field's value is one text: kind 'combined' over the column 'value'`,
      );
    }
    const columns = sealed.aad.read.flat().flatMap((part) => ('column' in part ? [part.column] : []));
    const unknown = columns.find((column) => column !== 'tenant' && column !== 'value');
    if (unknown !== undefined) {
      throw new TargetConfigError(
        `${where}.${form}.aad: a field's associated data can use the columns 'tenant' (the tenant id) and 'value', not '${unknown}'`,
      );
    }
    try {
      compileFormat(sealed);
    } catch (err) {
      if (err instanceof FormatError) throw new TargetConfigError(`${where}.${form}: ${err.message}`);
      throw err;
    }
  }
  const current = forms.current.value;
  if (current.kind === 'combined' && !current.prefix) {
    throw new TargetConfigError(
      `${where}.current.value.prefix is required: it tells a migrated value (such as 'v2:…') from a legacy one`,
    );
  }
  return {
    name: entry.name,
    group: entry.group ?? entry.name,
    table: splitTable(entry.table),
    id: entry.id,
    column: entry.column,
    ...(entry.path && { path: entry.path }),
    tenant: entry.tenant,
    ...forms,
  };
}

/** Lines shown before the one a YAML error is on. */
const EXCERPT_BEFORE = 3;

/**
 * The lines of `text` up to `line` (1-based), numbered, with a caret under `col`: enough to find the mistake, which
 * YAML often reports on the line after it. What could be a secret is masked: a URL's password, the value of a key
 * named password, secret or token, and any long base64 run (a key pasted in by mistake).
 */
export function excerpt(text: string, line: number, col: number): string {
  const lines = text.split(/\r?\n/);
  const from = Math.max(1, line - EXCERPT_BEFORE);
  const width = String(line).length;
  const shown = lines
    .slice(from - 1, line)
    .map((content, i) => `  ${String(from + i).padStart(width)} | ${mask(content)}`);
  return [...shown, `  ${' '.repeat(width)} | ${' '.repeat(Math.max(0, col - 1))}^`].join('\n');
}

function mask(line: string): string {
  return line
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^:/@\s]*:)[^@\s]*@/gi, '$1***@')
    .replace(/(\b(?:password|passwd|secret|token)\s*:\s*)\S.*$/i, '$1***')
    .replace(/[A-Za-z0-9+/_-]{32,}={0,2}/g, '***');
}

/**
 * Where a target's database is, as the configuration names it: its URL, or the variable holding it; with `env`, the
 * URL that variable holds too.
 */
function databaseNames(definition: TargetDefinition, env: NodeJS.ProcessEnv | undefined): string[] {
  const { url, urlEnv } = definition.database;
  if (url !== undefined) return [`url ${url}`];
  const variable = urlEnv ?? 'DATABASE_URL';
  const resolved = env?.[variable]?.trim();
  return [`variable ${variable}`, ...(resolved ? [`url ${resolved}`] : [])];
}

/**
 * Finding 9: a keyspace is a table in a database. Two targets over one table of one database would get two
 * registries and two rotations that each move the other's rows: refused, naming both and what to change. Targets
 * whose databases are named differently but are one database (two URLs) are refused when they are opened
 * (TargetRuntimes), by the database's identity.
 */
function refuseSharedTables(targets: Map<string, TargetDefinition>, source: string, env?: NodeJS.ProcessEnv): void {
  const list = [...targets.values()];
  for (const [i, a] of list.entries()) {
    for (const b of list.slice(i + 1)) {
      if (describeTable(a.table) !== describeTable(b.table)) continue;
      const names = databaseNames(a, env);
      const same = databaseNames(b, env).find((name) => names.includes(name));
      if (same === undefined) continue;
      throw new TargetConfigError(
        `${source}: targets '${a.name}' and '${b.name}' are one keyspace: both are table ${describeTable(a.table)} in the database of ${same.startsWith('url') ? 'the same URL' : same}. ` +
          `Two registries and two rotations of one table would each move the other's rows: remove targets.${b.name}, or give it its own table or database (database.urlEnv)`,
      );
    }
  }
}

/** The store the process's own provider (REKEY_KEY_PROVIDER) reads, as far as the environment says. */
function processStores(env: NodeJS.ProcessEnv | undefined): StoreName[] {
  const own = { key: 'default', what: "the process's own key provider (keys: default)" };
  if (env === undefined) return [own];
  const value =
    env.REKEY_KEY_PROVIDER?.trim() || keyProviderOf({ REKEY_KEYRING_FILE: env.REKEY_KEYRING_FILE || undefined });
  const provider = value === 'auto' ? detectKeyStore(env).provider : value;
  const store = PROCESS_STORES.find((s) => s.value === provider);
  return [own, ...(store?.reads(env) ?? [])];
}

function secretStore(secret: SecretSource): StoreName {
  if ('env' in secret) return { key: `secret-env ${secret.env}`, what: `the secret in ${secret.env}` };
  if ('vault' in secret) {
    const { mount = 'secret', path, field } = secret.vault;
    return {
      key: `secret-vault ${mount}/${path}#${field}`,
      what: `the Vault KV secret ${mount}/${path} (field ${field})`,
    };
  }
  const { key, what } = fileStoreName(secret.file);
  return { key: `secret-${key}`, what: what.replace('keyring file', 'secret file') };
}

/** Every store a target's KEKs come from (a Mycelium target reads two secrets). */
function storesOf(definition: TargetDefinition, env: NodeJS.ProcessEnv | undefined): StoreName[] {
  const keys = definition.keys;
  switch (keys.provider) {
    case 'default':
      return processStores(env);
    case 'env':
      return [envStoreName(keys.prefix)];
    case 'file': {
      const file = keys.file ?? (keys.fileEnv ? env?.[keys.fileEnv]?.trim() : undefined);
      if (file) return [fileStoreName(file)];
      return [{ key: `file-variable ${keys.fileEnv}`, what: `the keyring file ${keys.fileEnv} names` }];
    }
    case 'mycelium-token-secret':
      return [secretStore(keys.current), secretStore(keys.old)];
  }
}

/**
 * Finding 1: a key store belongs to one keyspace. Two targets whose KEKs come from one store (both `keys: default`,
 * one keyring file, one env prefix, one Secrets Manager secret, one KMS alias prefix) would destroy, disable or retire
 * each other's keys: refused, naming both, the store, and what to change.
 */
function refuseSharedKeyStores(targets: Map<string, TargetDefinition>, source: string, env?: NodeJS.ProcessEnv): void {
  const list = [...targets.values()].map((definition) => ({ definition, stores: storesOf(definition, env) }));
  for (const [i, a] of list.entries()) {
    for (const b of list.slice(i + 1)) {
      const shared = b.stores.find((store) => a.stores.some((other) => other.key === store.key));
      if (shared === undefined) continue;
      const name = b.definition.name;
      throw new TargetConfigError(
        `${source}: targets '${a.definition.name}' and '${name}' both take their KEKs from ${shared.what}: a key store belongs to one keyspace, ` +
          `and destroying or retiring a KEK of one would take it from the other. Give targets.${name} keys of its own ` +
          `(keys: { provider: file, file: <a keyring of its own> } or { provider: env, prefix: <a prefix of its own> })`,
      );
    }
  }
}

/**
 * Parses and checks a configuration document; the presets are always there, a file adds or overrides targets. With
 * `env` (the process's environment), targets are also compared by the database URLs and key stores it resolves.
 */
export function parseTargetsConfig(
  text: string | undefined,
  source = 'REKEY_CONFIG',
  env?: NodeJS.ProcessEnv,
): TargetsConfig {
  const targets = new Map<string, TargetDefinition>(Object.entries(PRESETS));
  if (text === undefined) {
    refuseSharedTables(targets, source, env);
    refuseSharedKeyStores(targets, source, env);
    return { defaultTarget: 'rekey', targets };
  }
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (err) {
    // The parser's first line says what is wrong and where; the excerpt is rekey's own, with secrets masked.
    const where = (err as { linePos?: { line: number; col: number }[] }).linePos?.[0];
    const first = (err as Error).message.split('\n')[0]!.replace(/:$/, '');
    throw new TargetConfigError(
      `${source} is not valid YAML or JSON: ${first}${where ? `\n${excerpt(text, where.line, where.col)}` : ''}`,
    );
  }
  const parsed = file.safeParse(document ?? {});
  if (!parsed.success) {
    throw new TargetConfigError(parsed.error.issues.map((issue) => problem(source, issue)).join('; '));
  }
  for (const [name, entry] of Object.entries(parsed.data.targets)) targets.set(name, definitionOf(name, entry, source));
  refuseSharedTables(targets, source, env);
  refuseSharedKeyStores(targets, source, env);
  const defaultTarget = parsed.data.defaultTarget ?? 'rekey';
  if (!targets.has(defaultTarget)) {
    throw new TargetConfigError(
      `${source}: defaultTarget '${defaultTarget}' is not a target (known: ${[...targets.keys()].join(', ')})`,
    );
  }
  return { defaultTarget, targets };
}

/** The configuration named by REKEY_CONFIG (a file path), or the presets alone. */
export function loadTargetsConfig(env: NodeJS.ProcessEnv = process.env): TargetsConfig {
  const path = env.REKEY_CONFIG?.trim();
  if (!path) {
    const fallback = env.REKEY_DEFAULT_TARGET?.trim();
    const config = parseTargetsConfig(undefined, 'the preset targets', env);
    return fallback ? withDefault(config, fallback, 'REKEY_DEFAULT_TARGET') : config;
  }
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new TargetConfigError(
      `REKEY_CONFIG names ${path}, which cannot be read: ${(err as NodeJS.ErrnoException).code}`,
    );
  }
  const config = parseTargetsConfig(text, path, env);
  const override = env.REKEY_DEFAULT_TARGET?.trim();
  return override ? withDefault(config, override, 'REKEY_DEFAULT_TARGET') : config;
}

function withDefault(config: TargetsConfig, name: string, source: string): TargetsConfig {
  if (!config.targets.has(name)) {
    throw new TargetConfigError(
      `${source} names '${name}', which is not a target (known: ${[...config.targets.keys()].join(', ')})`,
    );
  }
  return { ...config, defaultTarget: name };
}
