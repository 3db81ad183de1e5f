// Starting `rekey migrate-dek` runs, for every surface (CLI, admin API, tests): their ids are made by
// src/rotation/identity.ts. At most one migration runs per keyspace (`dek-migration-<target>.<db>`); a dry run writes
// nothing and gets an id of its own.
import {
  WithStartWorkflowOperation,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import {
  isMigrationWorkflowId,
  legacyMigrationWorkflowId,
  migrationWorkflowIdOf,
  parseWorkflowId,
  type Keyspace,
} from '../rotation/identity';
import { KEK_ID } from '../rotation/rotation-input';
import { TARGET_NAME } from '../targets/target';
import type { migrateDek, MigrationReport, MigrationRequest } from '../workflows';
import { migrationPlannedUpdate, migrationProgressQuery } from '../workflows/messages';
import { migrationRunStatus, retryingSteps, type RetryingStep, type RunStatus } from '../rotation/run-status';
import { queryRunning, refuseControlWithoutWorker } from './query-running';
import { startAnswered } from './start-answered';
import type { KeyspaceLookup } from './rotations';
import {
  failureOf,
  InvalidRotationError,
  RotationNotFoundError,
  RotationNotRunningError,
  type ErrorKind,
} from '../errors';

const PREFIX = 'dek-migration-';
const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export function migrationWorkflowId(request: MigrationRequest, keyspace: Keyspace, now = Date.now()): string {
  return migrationWorkflowIdOf(request.target, keyspace, request.dryRun ? now : undefined);
}

export type MigrationStart =
  | {
      kind: 'started';
      handle: WorkflowHandle<typeof migrateDek>;
      /** The report once the first plan was made (absent only from a worker whose build predates the update). */
      planned?: MigrationReport;
      unanswered?: string;
    }
  | { kind: 'already-running'; handle: WorkflowHandle<typeof migrateDek> };

/**
 * Checks the request's shape, starts it and waits for its plan step's verdict, in one call (Update-with-Start): a
 * refusal (a target with no fields, no current KEK known, a rotation under way) is thrown as a RunFailedError with
 * the kind of the error that refused it, and nothing was written. It starts under its keyspace's id with the keyspace
 * in the request (every step checks it). If a migration of the keyspace is running, or one an older build started
 * under the target's old id, nothing starts and that one is returned.
 */
export async function startMigration(
  client: Client,
  request: MigrationRequest,
  options: { taskQueue: string; keyspace: Keyspace; answerWithinMs?: number },
): Promise<MigrationStart> {
  if (!TARGET_NAME.test(request.target)) {
    throw new InvalidRotationError(
      `target '${request.target}' is not a target name (lower-case letters, digits, '-', '_')`,
    );
  }
  if (request.kekVersion !== undefined && !KEK_ID.test(request.kekVersion)) {
    throw new InvalidRotationError(`KEK version '${request.kekVersion}' is not a KEK id (e.g. 1)`);
  }
  if (request.tenantId !== undefined && !TENANT_ID.test(request.tenantId)) {
    throw new InvalidRotationError(
      `tenant id '${request.tenantId}' is not an id (letters, digits, '-', '_', '.', ':'; at most 128), such as a tenant's UUID`,
    );
  }
  for (const [name, value] of [
    ['parallelism', request.parallelism],
    ['batchSize', request.batchSize],
  ] as const) {
    if (value !== undefined && (!Number.isInteger(value) || value < 1 || value > 50_000)) {
      throw new InvalidRotationError(`${name} must be a whole number from 1 to 50000, got ${value}`);
    }
  }
  const workflowId = migrationWorkflowId(request, options.keyspace);
  if (!request.dryRun) {
    // One an older build started under the target's old id and that still runs: a new one waits for it.
    const legacy = client.workflow.getHandle<typeof migrateDek>(legacyMigrationWorkflowId(request.target));
    const running = await legacy.describe().then(
      (d) => d.type === 'migrateDek' && d.status.name === 'RUNNING',
      (err: unknown) => {
        if (err instanceof WorkflowNotFoundError) return false;
        throw err;
      },
    );
    if (running) return { kind: 'already-running', handle: legacy };
  }
  try {
    const start = new WithStartWorkflowOperation<typeof migrateDek>('migrateDek', {
      taskQueue: options.taskQueue,
      workflowId,
      args: [{ ...request, keyspace: options.keyspace.id }],
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      workflowIdConflictPolicy: 'FAIL',
    });
    const started = await startAnswered(client, migrationPlannedUpdate, start, options.answerWithinMs);
    const handle = client.workflow.getHandle<typeof migrateDek>(workflowId, undefined, {
      firstExecutionRunId: started.firstRunId,
    });
    return started.answered
      ? { kind: 'started', handle, planned: started.answer }
      : { kind: 'started', handle, unanswered: started.why };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    return { kind: 'already-running', handle: client.workflow.getHandle<typeof migrateDek>(workflowId) };
  }
}

/** Whether a reference names a migration (its workflow id, or `dek-migration-<target>`) rather than a rotation. */
export function isMigrationReference(reference: string): boolean {
  return isMigrationWorkflowId(reference);
}

/**
 * The workflow id a migration reference names: a workflow id as it is; `dek-migration-<target>` (the id of builds
 * before keyspaces, and the README's shorthand) names the target's migration in the keyspace `lookup` resolves, unless
 * an older build's migration still runs under it.
 */
async function resolveMigrationReference(client: Client, reference: string, lookup?: KeyspaceLookup): Promise<string> {
  const target = reference.slice(PREFIX.length);
  if (parseWorkflowId(reference) !== undefined || !TARGET_NAME.test(target) || lookup === undefined) return reference;
  const running = await client.workflow
    .getHandle(reference)
    .describe()
    .then(
      (d) => d.status.name === 'RUNNING',
      () => false,
    );
  const keyspace = running ? undefined : await lookup(target);
  return keyspace === undefined ? reference : migrationWorkflowIdOf(target, keyspace);
}

export interface MigrationStatus {
  workflowId: string;
  /** Temporal's execution status: RUNNING, COMPLETED, FAILED, TERMINATED, ... */
  status: string;
  report?: MigrationReport;
  failure?: string;
  /** The kind of the error the run failed with (its exit code and HTTP status). */
  failureKind?: ErrorKind;
  /** The type of that error (ApplicationNotReady, RetireRefusedError, …). */
  failureType?: string;
  /** What every surface names it by (errorAnswer: application_not_ready, or the kind's code), and what to do next. */
  error?: string;
  next?: string;
  startedAt?: Date;
  closedAt?: Date;
  /** Steps that failed and are being retried now (describe()'s pending activities past their first attempt). */
  retrying?: RetryingStep[];
  /** The one status every surface shows (src/rotation/run-status.ts), as of the moment it was read. */
  run: RunStatus;
}

/** A migration by its workflow id (`dek-migration-<target>.<db>`, or a dry run's); RotationNotFoundError if none. */
export async function migrationStatus(
  client: Client,
  reference: string,
  lookup?: KeyspaceLookup,
): Promise<MigrationStatus> {
  const workflowId = await resolveMigrationReference(client, reference, lookup);
  const handle = client.workflow.getHandle<typeof migrateDek>(workflowId);
  let description: Awaited<ReturnType<typeof handle.describe>>;
  try {
    description = await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new RotationNotFoundError(`no migration '${workflowId}'`);
    throw err;
  }
  if (description.type !== 'migrateDek') throw new RotationNotFoundError(`'${workflowId}' is not a migration`);
  const status = description.status.name;
  const times = { startedAt: description.startTime, closedAt: description.closeTime };
  let found: Omit<MigrationStatus, 'run'>;
  if (status === 'RUNNING') {
    const retrying = retryingSteps(description.raw.pendingActivities);
    const report = await queryRunning(
      handle,
      migrationProgressQuery,
      `migration ${workflowId}`,
      description.taskQueue,
      client.options.namespace,
    );
    found = { workflowId, status, report, ...times, ...(retrying.length > 0 && { retrying }) };
  } else {
    const ended = await handle.result().then(
      (report) => ({ report }),
      (err: unknown) => failureOf(err),
    );
    found = { workflowId, status, ...ended, ...times };
  }
  return { ...found, run: migrationRunStatus({ execution: status, ...found }, Date.now()) };
}

/** A migration that is still running (to pause, resume or abort); RotationNotRunningError otherwise. */
export async function runningMigration(
  client: Client,
  reference: string,
  lookup?: KeyspaceLookup,
): Promise<WorkflowHandle<typeof migrateDek>> {
  const { status, workflowId } = await migrationStatus(client, reference, lookup);
  if (status !== 'RUNNING')
    throw new RotationNotRunningError(`migration ${workflowId} is ${status.toLowerCase()}, not running`);
  const handle = client.workflow.getHandle<typeof migrateDek>(workflowId);
  await refuseControlWithoutWorker(client, handle, `migration ${workflowId}`);
  return handle;
}
