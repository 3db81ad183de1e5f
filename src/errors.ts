// Every error rekey raises on purpose, in one place, and the one mapping from an error to what each surface says:
// the CLI's exit code, the admin API's HTTP status, and whether an activity may retry. Temporal turns an error thrown
// by an activity into an ApplicationFailure whose type is the class name; the workflow's own failures carry one of
// WORKFLOW_FAILURES as their type. So a failure keeps its kind from the activity to the operator's terminal.
//
// Plain module (no Node APIs): the workflow bundle imports it.
import { ApplicationFailure } from '@temporalio/common';

/** What an operator should do about an error, which decides its exit code and HTTP status. */
export type ErrorKind =
  /** Fix the request or the configuration: exit 2, HTTP 400. */
  | 'invalid'
  /** No such rotation, schedule or KEK: exit 3, HTTP 404. */
  | 'not-found'
  /** Not now: a rotation of the keyspace is running, or it has ended: exit 4, HTTP 409. */
  | 'conflict'
  /** rekey refused a step that could lose data (a key that is not the registered one, a KEK still in use): exit 5, HTTP 422. */
  | 'refused'
  /** The operation failed; its message says why: exit 1, HTTP 500. */
  | 'failed'
  /** The database is unreachable (down, refusing connections, or silent past the connect timeout): exit 1, HTTP 503. */
  | 'unavailable';

export const EXIT_CODES: Readonly<Record<ErrorKind | 'ok', number>> = {
  ok: 0,
  failed: 1,
  invalid: 2,
  'not-found': 3,
  conflict: 4,
  refused: 5,
  // The operation failed, as 'failed' does: a script tells the two apart by the message (the API by its status).
  unavailable: 1,
};

export const HTTP_STATUSES: Readonly<Record<ErrorKind, number>> = {
  invalid: 400,
  'not-found': 404,
  conflict: 409,
  refused: 422,
  failed: 500,
  unavailable: 503,
};

/** The admin API's `error` field for each kind, which `rekey --json` gives its errors too. */
export const ERROR_CODES: Readonly<Record<ErrorKind, string>> = {
  invalid: 'bad_request',
  'not-found': 'not_found',
  conflict: 'conflict',
  refused: 'refused',
  failed: 'internal',
  unavailable: 'database_unreachable',
};

/** How long a caller told 503 (the database unreachable) waits before asking again: the admin API's Retry-After. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;

/** Base of rekey's errors: its kind, and whether retrying the same call could ever succeed. */
export abstract class RekeyError extends Error {
  static readonly kind: ErrorKind = 'failed';
  get kind(): ErrorKind {
    return (this.constructor as typeof RekeyError).kind;
  }
}

// ---------------------------------------------------------------------------------------------- request and config

/** A rotation request that cannot succeed however often it is retried. */
export class InvalidRotationError extends RekeyError {
  override readonly name = 'InvalidRotationError';
  static override readonly kind = 'invalid';
}

/** A targets configuration that cannot work: the message names the file, the key and what to fix. */
export class TargetConfigError extends RekeyError {
  override readonly name = 'TargetConfigError';
  static override readonly kind = 'invalid';
}

/** Environment variables that are missing or malformed; the message names each one. */
export class ConfigError extends RekeyError {
  override readonly name = 'ConfigError';
  static override readonly kind = 'invalid';
}

/** A sealed-value format description that cannot work; the message names the field. */
export class FormatError extends RekeyError {
  override readonly name = 'FormatError';
  static override readonly kind = 'invalid';
}

/** Key material that is malformed or missing: an env variable, a keyring file. A retry cannot fix it. */
export class KeyMaterialError extends RekeyError {
  override readonly name = 'KeyMaterialError';
  static override readonly kind = 'invalid';
  constructor(
    message: string,
    readonly source: string,
  ) {
    super(message);
  }
}

/** The target's table is not what its definition says. */
export class TargetSchemaError extends RekeyError {
  override readonly name = 'TargetSchemaError';
  static override readonly kind = 'invalid';
}

// ---------------------------------------------------------------------------------------------- keys

/** A KEK id that the key provider or the registry does not know. */
export class UnknownKekError extends RekeyError {
  override readonly name = 'UnknownKekError';
  static override readonly kind = 'not-found';
  constructor(
    readonly kekId: string,
    where: string,
  ) {
    super(`KEK '${kekId}' is not known to ${where}`);
  }
}

/** The registry and the key provider disagree about a KEK (same id, different key). */
export class KekFingerprintMismatchError extends RekeyError {
  override readonly name = 'KekFingerprintMismatchError';
  static override readonly kind = 'refused';
  constructor(
    readonly kekId: string,
    readonly registered: string,
    readonly provided: string,
    /** Where the two keys are, when it is not the key provider and the registry (an import into a store). */
    message?: string,
  ) {
    super(
      message ??
        `KEK '${kekId}' in the key provider has fingerprint ${provided}, but the registry recorded ${registered}: this is a different key`,
    );
  }
}

/** The registry knows a KEK by its fingerprint, and this process holds no key with that fingerprint. */
export class KekNotHeldError extends RekeyError {
  override readonly name = 'KekNotHeldError';
  static override readonly kind = 'refused';
  constructor(
    readonly kekId: string,
    readonly fingerprint: string,
    where: string,
  ) {
    super(`KEK '${kekId}' (${fingerprint} in the registry) is not in ${where}: add that key here, not another one`);
  }
}

/**
 * A retired KEK asked to wrap or unwrap. The store may still hold it (for the restore window), and a store such as
 * moto or a KMS key still enabled would use it: the registry is what refuses.
 */
export class KekRetiredError extends RekeyError {
  override readonly name = 'KekRetiredError';
  static override readonly kind = 'refused';
  constructor(
    readonly kekId: string,
    readonly target: string,
    state = 'retired',
  ) {
    super(
      state === 'destroyed'
        ? `KEK '${kekId}' of target '${target}' was destroyed after its restore window: nothing can use it again`
        : `KEK '${kekId}' of target '${target}' is retired: it may neither wrap nor unwrap. Within its restore window, 'rekey keys restore ${kekId} --target ${target} --reason "..."' brings it back as decrypt-only`,
    );
  }
}

/**
 * A key store step refused because it would act on a key other than the one the registry recorded, or strand one the
 * registry still needs: a KMS alias that names another key, an alias prefix another deployment uses, a Secrets
 * Manager version that would be left without a label. The message names both keys and what to do.
 */
export class KeyStoreRefusedError extends RekeyError {
  override readonly name = 'KeyStoreRefusedError';
  static override readonly kind = 'refused';
}

/**
 * A step rekey may not carry out in a key store it may not write (the environment, Mycelium's token secrets, a
 * Secrets Manager secret rekey is not allowed to change): the step is the operator's, and `instruction` says exactly
 * what to do. Raised by a store driver's hook; the keyring decides whether the step waits on it (a KEK to provision)
 * or records it for the operator (a key to remove after destruction).
 */
export class OperatorMustActError extends RekeyError {
  override readonly name = 'OperatorMustActError';
  static override readonly kind = 'invalid';
  constructor(
    readonly store: string,
    readonly instruction: string,
  ) {
    super(`${store} is read-only to rekey: ${instruction}`);
  }
}

/** A DEK cipher used after its release: its key bytes are zeroized, nothing may be wrapped or opened with it. */
export class CipherReleasedError extends RekeyError {
  override readonly name = 'CipherReleasedError';
  static override readonly kind = 'failed';
}

/** A restore of a KEK that cannot be restored: not retired, destroyed, or past its restore window. */
export class KekRestoreRefusedError extends RekeyError {
  override readonly name = 'KekRestoreRefusedError';
  static override readonly kind = 'refused';
}

/** A KEK state change that the lifecycle forbids (e.g. anything out of `retired`). */
export class KekTransitionError extends RekeyError {
  override readonly name = 'KekTransitionError';
  static override readonly kind = 'refused';
  constructor(
    readonly kekId: string,
    readonly from: string,
    readonly to: string,
    reason: string,
  ) {
    super(`KEK '${kekId}' cannot go from ${from} to ${to}: ${reason}`);
  }
}

/** A write under a KEK the registry does not allow to wrap (retired meanwhile, or not yet promoted). */
export class KekNotWritableError extends RekeyError {
  override readonly name = 'KekNotWritableError';
  static override readonly kind = 'refused';
  constructor(
    readonly target: string,
    readonly kekId: string,
    readonly state: string | null,
  ) {
    super(
      `target '${target}': KEK '${kekId}' is ${state ?? 'not in the registry'}, and may not wrap: nothing was written`,
    );
  }
}

/** Retire found rows that still need the KEK: retrying now would not change that. */
export class RetireRefusedError extends RekeyError {
  override readonly name = 'RetireRefusedError';
  static override readonly kind = 'refused';
}

/**
 * A KEK rotation of a target whose fields still hold legacy values, encrypted directly by the KEK being replaced:
 * retiring it would make them unreadable. `rekey migrate-dek` moves them first.
 */
export class LegacyValuesRemainError extends RekeyError {
  override readonly name = 'LegacyValuesRemainError';
  static override readonly kind = 'refused';
}

/**
 * A keyspace (a table in a database) that is not the one the request names: a rotation's step reached a worker whose
 * target resolves to another database or table, or a KEK's store records another keyspace as its owner. The message
 * names both.
 */
export class KeyspaceMismatchError extends RekeyError {
  override readonly name = 'KeyspaceMismatchError';
  static override readonly kind = 'refused';
}

// ---------------------------------------------------------------------------------------------- data

/** A wrapped DEK that does not unwrap: tampered, copied from another tenant, relabelled, or corrupt. */
export class DekUnwrapError extends RekeyError {
  override readonly name = 'DekUnwrapError';
  static override readonly kind = 'failed';
  constructor(
    readonly tenantId: string,
    readonly kekId: string,
    readonly reason: string,
  ) {
    super(`DEK of tenant '${tenantId}' does not unwrap with KEK '${kekId}': ${reason}`);
  }
}

/** Tenant data that does not decrypt with the tenant's DEK. */
export class CiphertextError extends RekeyError {
  override readonly name = 'CiphertextError';
  static override readonly kind = 'failed';
  constructor(
    readonly tenantId: string,
    reason: string,
  ) {
    super(`ciphertext of tenant '${tenantId}' does not decrypt: ${reason}`);
  }
}

/** A stored value that cannot be read; `reason` says why, without any secret. */
export class UnreadableValueError extends RekeyError {
  override readonly name = 'UnreadableValueError';
  static override readonly kind = 'failed';
  constructor(readonly reason: string) {
    super(reason);
  }
}

// ---------------------------------------------------------------------------------------------- rotations

export class RotationNotFoundError extends RekeyError {
  override readonly name = 'RotationNotFoundError';
  static override readonly kind = 'not-found';
}

export class RotationNotRunningError extends RekeyError {
  override readonly name = 'RotationNotRunningError';
  static override readonly kind = 'conflict';
}

/** A control (pause, abort, …) the rotation cannot honour where it is: thrown by the workflow's update validators. */
export class ControlRefusedError extends RekeyError {
  override readonly name = 'ControlRefusedError';
  static override readonly kind = 'conflict';
}

/**
 * A migration asked for while a rotation of its target is under way: the legacy values are pinned to the KEK the
 * rotation replaces. Not now: finish or abort the rotation first.
 */
export class RotationUnderWayError extends RekeyError {
  override readonly name = 'RotationUnderWayError';
  static override readonly kind = 'conflict';
}

/**
 * A run's failure as a client reads it back from Temporal (the validate step's refusal of a run just started, a run
 * that ended failed): the message of the error that caused it, and that error's kind, so that every surface answers
 * it with the code it would give the error itself.
 */
export class RunFailedError extends RekeyError {
  override readonly name = 'RunFailedError';
  constructor(
    message: string,
    private readonly failureKind: ErrorKind,
    /** The type of the error the run failed with (errorType), so that its answer names it. */
    readonly failureType?: string,
  ) {
    super(message);
  }
  override get kind(): ErrorKind {
    return this.failureKind;
  }
}

/**
 * A run started whose first step gave no verdict in time (no worker polls its task queue, or the step keeps retrying
 * a database that does not answer): it stays started, and may still go on. The message says what it is doing and
 * names its id; its answer has a code (`no_verdict`) and a next step of its own (CLIENT_ERROR_ANSWERS).
 */
export class NoVerdictError extends RekeyError {
  override readonly name = 'NoVerdictError';
}

/** No worker polls a task queue that a request needs one on (`rekey schedule create` asks a worker first). */
export class NoWorkerError extends RekeyError {
  override readonly name = 'NoWorkerError';
}

/** An error the CLI reports as one line, with the exit code of its kind. */
export class CliError extends RekeyError {
  override readonly name = 'CliError';
  constructor(
    message: string,
    private readonly cliKind: ErrorKind = 'failed',
    /** The type of the error it reports (a run's failure), so that its answer names it (see errorAnswer). */
    readonly failureType?: string,
  ) {
    super(message);
  }
  override get kind(): ErrorKind {
    return this.cliKind;
  }
}

/**
 * PostgreSQL could not be reached: down, refusing connections (or this role's login), ending them, or silent past the
 * connect timeout. A retry can succeed once it answers, so unlike the classes below it is not a non-retryable type.
 */
export class DatabaseUnreachableError extends RekeyError {
  static override readonly kind: ErrorKind = 'unavailable';
  override readonly name = 'DatabaseUnreachableError';
  constructor(detail: string) {
    super(`the database is unreachable (${detail}): retry once it answers`);
  }
}

/** Marks an error a PostgreSQL connection failed with (src/store/connect.ts's pools mark every one they open). */
const UNREACHABLE_MARK = 'rekeyDatabaseUnreachable';
export function markDatabaseUnreachable<E>(err: E): E {
  if (typeof err === 'object' && err !== null) (err as Record<string, unknown>)[UNREACHABLE_MARK] = true;
  return err;
}

/**
 * SQLSTATEs of a database that cannot be used now (the server says so): connection exceptions (08), a server shutting
 * down or starting (57P01 admin shutdown, as pg_terminate_backend ends a session, 57P02, 57P03), too many
 * connections (53300), and a login refused (28: invalid authorization, e.g. a role set NOLOGIN).
 */
const UNREACHABLE_SQLSTATE = /^(08...|57P0[123]|53300|28...)$/;
/** What the pg driver says, without a code, when a connection it held or was opening is gone. */
const UNREACHABLE_PG_MESSAGE = /^(Connection terminated|timeout exceeded when trying to connect)/;

/** Whether `e` (one error, not its causes) says the database is unreachable. */
function saysUnreachable(e: object): boolean {
  if (e instanceof DatabaseUnreachableError || (e as Record<string, unknown>)[UNREACHABLE_MARK] === true) return true;
  const { code, severity, message } = e as { code?: unknown; severity?: unknown; message?: unknown };
  // A PostgreSQL error has a severity beside its SQLSTATE (a Node socket error has a code, never a severity).
  if (typeof severity === 'string' && typeof code === 'string' && UNREACHABLE_SQLSTATE.test(code)) return true;
  return typeof message === 'string' && UNREACHABLE_PG_MESSAGE.test(message);
}

/**
 * The error as the database's unreachability, when anything in its cause chain says so (the pg driver's errors, those
 * of a connection a rekey pool opened, a PostgreSQL error of a class above); else undefined.
 */
export function databaseUnreachable(err: unknown): DatabaseUnreachableError | undefined {
  for (let e: unknown = err, depth = 0; typeof e === 'object' && e !== null && depth < 8; depth++) {
    if (e instanceof DatabaseUnreachableError) return e;
    if (saysUnreachable(e)) {
      // A socket error's message names the address (`connect ECONNREFUSED 127.0.0.1:5432`); Node's error for a host
      // of several addresses (an AggregateError) has none, only a code.
      const { message, code } = e as { message?: unknown; code?: unknown };
      const detail = typeof message === 'string' && message !== '' ? message : typeof code === 'string' ? code : '';
      return new DatabaseUnreachableError(detail || 'no answer');
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The workflow's own failure types (ApplicationFailure.type), with their kinds. */
export const WORKFLOW_FAILURES = {
  /** Some live application instance never held (or wrapped with) the new KEK within the fleet timeout. */
  FleetNotReady: 'failed',
  /** The application never did a step it owns (promote, retire) within the confirm timeout. */
  ApplicationNotReady: 'failed',
  /** Rows the run wrote do not open under the new KEK, or the canary row did not move. */
  VerifyFailed: 'refused',
  /** Rows still need the old KEK after the last pass allowed. */
  RewrapIncomplete: 'failed',
  /** An activity failed for good with an error of no known type. */
  RotationFailed: 'failed',
} as const satisfies Record<string, ErrorKind>;
export type WorkflowFailureType = keyof typeof WORKFLOW_FAILURES;

/**
 * How every surface names each workflow failure type (their kind alone, 'failed' = 'internal', read as a bug in rekey)
 * and what the operator does next. None of them retired or destroyed anything: the old KEK still opens every row.
 */
export const WORKFLOW_FAILURE_ANSWERS: Readonly<Record<WorkflowFailureType, { error: string; next: string }>> = {
  FleetNotReady: {
    error: 'fleet_not_ready',
    next: "give the instances the message names the registered key (or drain them), then run the rotation again; the old KEK was not retired (while a run waits at the fleet gate, 'rekey override-fleet' lets it go once they are drained)",
  },
  ApplicationNotReady: {
    error: 'application_not_ready',
    next: 'do on the application the step the message names (or give it longer with --confirm-timeout), then run the rotation again; the old KEK was not retired',
  },
  VerifyFailed: {
    error: 'verify_failed',
    next: 'do not retire the old KEK by hand: it was kept, and still opens every row; find out why the rows the message names do not open under the new KEK before running the rotation again',
  },
  RewrapIncomplete: {
    error: 'rewrap_incomplete',
    next: 'the rows the message names are still on the old KEK, which was kept: make them readable (or remove them), then run the rotation again',
  },
  RotationFailed: {
    error: 'rotation_failed',
    next: "a step failed with an error rekey has no type for: read the message and the run's page in the Web UI, and check the KEKs with 'rekey kek-status' before running the rotation again",
  },
};

/**
 * Errors a client raises that every surface names by a code of their own, not their kind's (as a workflow failure
 * type is named), with what the operator does next.
 */
export const CLIENT_ERROR_ANSWERS: Readonly<Record<'NoVerdictError', { error: string; next: string }>> = {
  NoVerdictError: {
    error: 'no_verdict',
    next: "the run stays started and goes on once a worker takes it up: follow it with 'rekey status <id>' (the message names it); if no worker has taken it up, start a rekey worker of this database on the task queue the message names; to stop it instead, 'rekey abort <id>' (of a run no worker ever took up, that refusal gives the line that ends it)",
  },
};

/** Every error type named by a code of its own, with its next step: the workflow's failure types and the client's. */
export const ERROR_ANSWERS: Readonly<Record<string, { error: string; next: string }>> = {
  ...WORKFLOW_FAILURE_ANSWERS,
  ...CLIENT_ERROR_ANSWERS,
};

/**
 * What every surface says of an error (the CLI's line and --json, the admin API's body, a failed run's status, the
 * Web UI's details): `error` is the workflow failure type's code (application_not_ready) where it is one, else the
 * kind's (ERROR_CODES, 'internal' only for an error of no known type); `next`, for those types, what to do next.
 */
export interface ErrorAnswer {
  error: string;
  kind: ErrorKind;
  message: string;
  next?: string;
  exit: number;
  http: number;
}

export function errorAnswer(err: unknown, message = failureMessage(err)): ErrorAnswer {
  const kind = errorKind(err);
  const type = errorType(err);
  const known = type !== undefined && Object.hasOwn(ERROR_ANSWERS, type) ? ERROR_ANSWERS[type] : undefined;
  return {
    error: known?.error ?? ERROR_CODES[kind],
    kind,
    message,
    ...(known && { next: known.next }),
    exit: EXIT_CODES[kind],
    http: HTTP_STATUSES[kind],
  };
}

const CLASSES = [
  InvalidRotationError,
  TargetConfigError,
  ConfigError,
  FormatError,
  KeyMaterialError,
  TargetSchemaError,
  UnknownKekError,
  KekFingerprintMismatchError,
  KekNotHeldError,
  KeyStoreRefusedError,
  OperatorMustActError,
  CipherReleasedError,
  KekRetiredError,
  KekRestoreRefusedError,
  KekTransitionError,
  KekNotWritableError,
  RetireRefusedError,
  LegacyValuesRemainError,
  KeyspaceMismatchError,
  DekUnwrapError,
  CiphertextError,
  UnreadableValueError,
  RotationNotFoundError,
  RotationNotRunningError,
  ControlRefusedError,
  RotationUnderWayError,
  NoWorkerError,
  NoVerdictError,
] as const;

/** The kind of every error type by name: rekey's classes and the workflow's failure types. */
const KIND_BY_TYPE: ReadonlyMap<string, ErrorKind> = new Map<string, ErrorKind>([
  ...CLASSES.map((c) => [c.name, c.kind] as [string, ErrorKind]),
  [DatabaseUnreachableError.name, DatabaseUnreachableError.kind],
  ...(Object.entries(WORKFLOW_FAILURES) as [string, ErrorKind][]),
]);

/** Error types an activity must not retry: every rekey error is one (a retry cannot fix what it reports). */
export const NON_RETRYABLE: readonly string[] = CLASSES.map((c) => c.name);

/**
 * The kind of any error: a rekey error, or a Temporal failure (workflow, activity or update) whose cause chain names
 * a rekey error type or a workflow failure type; else unavailable when it says the database is unreachable (see
 * `databaseUnreachable`). Anything else failed.
 */
export function errorKind(err: unknown): ErrorKind {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    if (e instanceof RekeyError) return e.kind;
    const type = (e as { type?: unknown }).type;
    if (typeof type === 'string' && KIND_BY_TYPE.has(type)) return KIND_BY_TYPE.get(type)!;
    const name = (e as { name?: unknown }).name;
    if (typeof name === 'string' && KIND_BY_TYPE.has(name)) return KIND_BY_TYPE.get(name)!;
    e = (e as { cause?: unknown }).cause;
  }
  // Of no other kind: the database's unreachability, when the chain says so.
  return databaseUnreachable(err) !== undefined ? 'unavailable' : 'failed';
}

/** The innermost message of a failure (Temporal wraps an activity's in the workflow's): the one that says why. */
export function failureMessage(err: unknown): string {
  let current: unknown = err;
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}

/** The CLI's line of an answer: its message, and, where it has one, its code and what to do next. */
export function plainErrorLine(answer: ErrorAnswer): string {
  return answer.next === undefined ? answer.message : `${answer.message} (${answer.error}; next: ${answer.next})`;
}

/** A failed run's failure as a status gives it (rekey status --json, the admin API): message, kind, type, code, next. */
export function failureOf(err: unknown): {
  failure: string;
  failureKind: ErrorKind;
  failureType?: string;
  error: string;
  next?: string;
} {
  const { error, kind, message, next } = errorAnswer(err);
  const type = errorType(err);
  return {
    failure: message,
    failureKind: kind,
    ...(type !== undefined && { failureType: type }),
    error,
    ...(next !== undefined && { next }),
  };
}

export const exitCodeFor = (err: unknown): number => EXIT_CODES[errorKind(err)];
export const httpStatusFor = (err: unknown): number => HTTP_STATUSES[errorKind(err)];

/**
 * A run's failure as the run itself holds it (the `progress` query of a failed rotation or migration, what tctl and
 * `temporal workflow query` answer): the error's type (a class of this module, one of WORKFLOW_FAILURES, or the
 * type Temporal gave an error of no known type), its kind, and its message.
 */
export interface RunFailure extends Pick<ErrorAnswer, 'error' | 'kind' | 'message' | 'next'> {
  type: string;
}

/** The first error type of a failure's cause chain that this module knows, else the innermost type or name given. */
export function errorType(err: unknown): string | undefined {
  let given: string | undefined;
  for (let e: unknown = err, depth = 0; typeof e === 'object' && e !== null && depth < 8; depth++) {
    const carried = (e as { failureType?: unknown }).failureType;
    if (typeof carried === 'string') return carried;
    const type = (e as { type?: unknown }).type;
    if (typeof type === 'string' && KIND_BY_TYPE.has(type)) return type;
    const name = (e as { name?: unknown }).name;
    if (typeof name === 'string' && KIND_BY_TYPE.has(name)) return name;
    if (typeof type === 'string' && type !== '') given = type;
    e = (e as { cause?: unknown }).cause;
  }
  return given ?? (err instanceof Error ? err.name : undefined);
}

/** Whether a failure's cause chain names an error type of this module or a workflow failure type: rekey's own. */
export function hasKnownType(err: unknown): boolean {
  const type = errorType(err);
  return type !== undefined && KIND_BY_TYPE.has(type);
}

/** What a run holds of the failure it ends with. Pure: the workflows call it as they fail. */
export function runFailure(err: unknown): RunFailure {
  const { error, kind, message, next } = errorAnswer(err);
  return { type: errorType(err) ?? 'Error', error, kind, message, ...(next !== undefined && { next }) };
}

/** The workflow's failure of one of its own types: non-retryable, with a message that says what to do. */
export function rotationFailure(type: WorkflowFailureType, message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(message, type);
}
