// Starting `rekey migrate-dek` runs, for every surface (CLI, admin API, tests): their ids are made by
// src/rotation/identity.ts. At most one migration runs per keyspace (`dek-migration-<target>.<db>`); a dry run writes
// nothing and gets an id of its own.
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { isMigrationWorkflowId, migrationWorkflowIdOf, parseWorkflowId, type Keyspace } from '../rotation/identity';
import { KEK_ID } from '../rotation/rotation-input';
import { TARGET_NAME } from '../targets/target';
import { migrateDek, migrationProgressQuery, type MigrationReport, type MigrationRequest } from '../workflows';
import { failureMessage, type KeyspaceLookup } from './rotations';
import { InvalidRotationError, RotationNotFoundError, RotationNotRunningError } from '../errors';

const PREFIX = 'dek-migration-';
const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export function migrationWorkflowId(request: MigrationRequest, keyspace: Keyspace, now = Date.now()): string {
  return migrationWorkflowIdOf(request.target, keyspace, request.dryRun ? now : undefined);
}

export type MigrationStart =
  | { kind: 'started'; handle: WorkflowHandle<typeof migrateDek> }
  | { kind: 'already-running'; handle: WorkflowHandle<typeof migrateDek> };

/** Checks the request's shape and starts it; if a migration of the target is running, returns that one. */
export async function startMigration(
  client: Client,
  request: MigrationRequest,
  options: { taskQueue: string; keyspace: Keyspace },
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
    const legacy = client.workflow.getHandle<typeof migrateDek>(`${PREFIX}${request.target}`);
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
    const handle = await client.workflow.start(migrateDek, {
      taskQueue: options.taskQueue,
      workflowId,
      args: [{ ...request, keyspace: options.keyspace.id }],
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      workflowIdConflictPolicy: 'FAIL',
    });
    return { kind: 'started', handle };
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
  startedAt?: Date;
  closedAt?: Date;
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
  if (status === 'RUNNING') return { workflowId, status, report: await handle.query(migrationProgressQuery), ...times };
  const ended = await handle.result().then(
    (report) => ({ report }),
    (err: unknown) => ({ failure: failureMessage(err) }),
  );
  return { workflowId, status, ...ended, ...times };
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
  return client.workflow.getHandle<typeof migrateDek>(workflowId);
}
