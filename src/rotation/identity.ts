// What a keyspace is, and the workflow id of everything rekey runs on one. A keyspace is what a rotation rotates: one
// table in one database. The database is known by the identity rekey gives it (`rekey.database_identity`, a random
// UUID made once by a migration); the table by its `schema.table`. Two targets over the same keyspace are refused; two
// databases that both have a target `rekey` are two keyspaces, and their workflows have two ids in one Temporal
// namespace.
//
// Every id is made here and parsed back here. The parts are separated by `.`, which a target name cannot hold, and the
// database part has a fixed length, so an id names one target, one database and (for a destruction) one KEK whatever
// '-' or '.' the target name and the KEK id hold.
//
// Plain module (no Node APIs): the workflow bundle imports it.
import { TARGET_NAME } from '../targets/target';

/** One table in one database: what a rotation rotates, and what a key store belongs to. */
export interface Keyspace {
  /** The database's identity (`rekey.database_identity`): a UUID. */
  databaseId: string;
  /** `schema.table`. */
  table: string;
  /** `<database id>/<schema.table>`: stable and printable. */
  id: string;
}

/** How many hex digits of the database identity a workflow id carries (48 bits). */
export const SHORT_DATABASE_ID_LENGTH = 12;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TABLE = /^[A-Za-z_][A-Za-z0-9_]{0,62}\.[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export function keyspaceOf(databaseId: string, table: string): Keyspace {
  const id = databaseId.toLowerCase();
  if (!UUID.test(id)) throw new Error(`'${databaseId}' is not a database identity (a UUID)`);
  if (!TABLE.test(table)) throw new Error(`'${table}' is not a table ('schema.table')`);
  return { databaseId: id, table, id: `${id}/${table}` };
}

/** The keyspace an id (`<database id>/<schema.table>`) names; undefined for anything else. */
export function parseKeyspaceId(id: string): Keyspace | undefined {
  const slash = id.indexOf('/');
  if (slash < 0) return undefined;
  const databaseId = id.slice(0, slash);
  const table = id.slice(slash + 1);
  return UUID.test(databaseId) && TABLE.test(table) ? keyspaceOf(databaseId, table) : undefined;
}

/** The fixed-length part of a database identity that workflow ids carry: its first 12 hex digits. */
export function shortDatabaseId(keyspace: Keyspace | string): string {
  const databaseId =
    typeof keyspace === 'string' ? (parseKeyspaceId(keyspace)?.databaseId ?? keyspace) : keyspace.databaseId;
  const hex = databaseId.replaceAll('-', '').toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(hex)) throw new Error(`'${databaseId}' is not a database identity (a UUID)`);
  return hex.slice(0, SHORT_DATABASE_ID_LENGTH);
}

const PREFIX = {
  rotation: 'kek-rotation-',
  migration: 'dek-migration-',
  destroy: 'rekey-destroy-',
} as const;

/** What a workflow id says: which workflow, of which target in which database, and (a destruction) of which KEK. */
export type WorkflowIdentity =
  | { kind: 'rotation' | 'migration'; target: string; database: string; dryRunAt?: number }
  | { kind: 'destroy'; target: string; database: string; kekId: string };

/**
 * The one place every workflow id rekey starts is made: `kek-rotation-<target>.<db>` (a dry run adds
 * `-dry-run-<ms>`), `dek-migration-<target>.<db>` (likewise), `rekey-destroy-<target>.<db>.<kek id>`, where `<db>`
 * is the first 12 hex digits of the database's identity.
 */
export function workflowIdOf(identity: WorkflowIdentity): string {
  if (!TARGET_NAME.test(identity.target)) throw new Error(`'${identity.target}' is not a target name`);
  const database = shortDatabaseId(identity.database);
  const base = `${PREFIX[identity.kind]}${identity.target}.${database}`;
  if (identity.kind === 'destroy') return `${base}.${identity.kekId}`;
  return identity.dryRunAt === undefined ? base : `${base}-dry-run-${identity.dryRunAt}`;
}

const ROTATION_OR_MIGRATION =
  /^(kek-rotation-|dek-migration-)([a-z0-9][a-z0-9_-]{0,62})\.([0-9a-f]{12})(?:-dry-run-(\d+))?$/;
const DESTROY = /^rekey-destroy-([a-z0-9][a-z0-9_-]{0,62})\.([0-9a-f]{12})\.([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$/;

/** The identity a workflow id made by workflowIdOf carries; undefined for any other id (older builds' included). */
export function parseWorkflowId(workflowId: string): WorkflowIdentity | undefined {
  const destroy = DESTROY.exec(workflowId);
  if (destroy) return { kind: 'destroy', target: destroy[1]!, database: destroy[2]!, kekId: destroy[3]! };
  const match = ROTATION_OR_MIGRATION.exec(workflowId);
  if (!match) return undefined;
  return {
    kind: match[1] === PREFIX.rotation ? 'rotation' : 'migration',
    target: match[2]!,
    database: match[3]!,
    ...(match[4] !== undefined && { dryRunAt: Number(match[4]) }),
  };
}

/** The workflow id of a target's rotations in one keyspace: at most one runs there, whatever surface starts it. */
export function rotationWorkflowId(target: string, keyspace: Keyspace | string): string {
  return workflowIdOf({ kind: 'rotation', target, database: databaseOf(keyspace) });
}

/** A dry run's id: its own (it writes nothing), derived from the keyspace's. */
export function dryRunWorkflowId(target: string, keyspace: Keyspace | string, at: number): string {
  return workflowIdOf({ kind: 'rotation', target, database: databaseOf(keyspace), dryRunAt: at });
}

export function migrationWorkflowIdOf(target: string, keyspace: Keyspace | string, dryRunAt?: number): string {
  return workflowIdOf({
    kind: 'migration',
    target,
    database: databaseOf(keyspace),
    ...(dryRunAt !== undefined && { dryRunAt }),
  });
}

/** The workflow id of the destruction of one KEK of one keyspace after its restore window. */
export function destroyWorkflowIdOf(target: string, keyspace: Keyspace | string, kekId: string): string {
  return workflowIdOf({ kind: 'destroy', target, database: databaseOf(keyspace), kekId });
}

/**
 * Whether `workflowId` is one a rotation of this target and keyspace may run under: its own id, or (a dry run) one
 * derived from it.
 */
export function isRotationIdOf(
  workflowId: string,
  target: string,
  keyspace: Keyspace | string,
  dryRun: boolean,
): boolean {
  const parsed = parseWorkflowId(workflowId);
  return (
    parsed?.kind === 'rotation' &&
    parsed.target === target &&
    parsed.database === shortDatabaseId(databaseOf(keyspace)) &&
    (parsed.dryRunAt !== undefined) === dryRun
  );
}

function databaseOf(keyspace: Keyspace | string): string {
  return typeof keyspace === 'string' ? (parseKeyspaceId(keyspace)?.databaseId ?? keyspace) : keyspace.databaseId;
}

// ---- Ids of builds before keyspaces: still read (rotations they started keep running), never made for new runs ----

/** The id builds before keyspaces gave a target's rotations (one per target in a namespace, whatever the database). */
export function legacyRotationWorkflowId(target: string): string {
  return `${PREFIX.rotation}${target}`;
}

/** The id builds before keyspaces gave a destruction (ambiguous when the target or the KEK id holds '-'). */
export function legacyDestroyWorkflowId(target: string, kekId: string): string {
  return `${PREFIX.destroy}${target}-${kekId}`;
}

/** The id builds before keyspaces gave a target's migrations (`dek-migration-<target>`). */
export function legacyMigrationWorkflowId(target: string): string {
  return `${PREFIX.migration}${target}`;
}

/**
 * The workflow ids of a target's rotations or migrations in one keyspace, as a visibility query asks for them: the
 * runs' own id, the prefix of their dry runs' ids, and the id builds before keyspaces gave them (which names no
 * database).
 */
export function runIdsOf(
  kind: 'rotation' | 'migration',
  target: string,
  keyspace: Keyspace | string,
): { id: string; dryRunPrefix: string; legacyId: string } {
  const id = workflowIdOf({ kind, target, database: databaseOf(keyspace) });
  const legacyId = `${PREFIX[kind]}${target}`;
  return { id, dryRunPrefix: `${id}-dry-run-`, legacyId };
}

/** The id build 47ef157 (before targets) gave a rotation: `kek-rotation-<from>-to-<to>`. */
export function firstReleaseRotationWorkflowId(from: string, to: string): string {
  return `${PREFIX.rotation}${from}-to-${to}`;
}

/** Whether a reference is a rotation's workflow id of this build or an older one (rather than a target name). */
export function isRotationWorkflowId(reference: string): boolean {
  return reference.startsWith(PREFIX.rotation);
}

/** Whether a reference is a migration's workflow id. */
export function isMigrationWorkflowId(reference: string): boolean {
  return reference.startsWith(PREFIX.migration);
}
