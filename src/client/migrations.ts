// Starting `rekey migrate-dek` runs, for every surface (CLI, admin API, tests): one place decides their identity.
// At most one migration runs per target; a dry run writes nothing and gets an id of its own.
import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandle } from '@temporalio/client';
import { KEK_ID } from '../rotation/rotation-input';
import { TARGET_NAME } from '../targets/target';
import { migrateDek, type MigrationRequest } from '../workflows';
import { InvalidRotationError } from '../errors';

export function migrationWorkflowId(request: MigrationRequest, now = Date.now()): string {
  const base = `dek-migration-${request.target}`;
  return request.dryRun ? `${base}-dry-run-${now}` : base;
}

export type MigrationStart =
  | { kind: 'started'; handle: WorkflowHandle<typeof migrateDek> }
  | { kind: 'already-running'; handle: WorkflowHandle<typeof migrateDek> };

/** Checks the request's shape and starts it; if a migration of the target is running, returns that one. */
export async function startMigration(
  client: Client,
  request: MigrationRequest,
  options: { taskQueue: string },
): Promise<MigrationStart> {
  if (!TARGET_NAME.test(request.target)) {
    throw new InvalidRotationError(
      `target '${request.target}' is not a target name (lower-case letters, digits, '-', '_')`,
    );
  }
  if (request.kekVersion !== undefined && !KEK_ID.test(request.kekVersion)) {
    throw new InvalidRotationError(`KEK version '${request.kekVersion}' is not a KEK id (e.g. 1)`);
  }
  for (const [name, value] of [
    ['parallelism', request.parallelism],
    ['batchSize', request.batchSize],
  ] as const) {
    if (value !== undefined && (!Number.isInteger(value) || value < 1 || value > 50_000)) {
      throw new InvalidRotationError(`${name} must be a whole number from 1 to 50000, got ${value}`);
    }
  }
  const workflowId = migrationWorkflowId(request);
  try {
    const handle = await client.workflow.start(migrateDek, {
      taskQueue: options.taskQueue,
      workflowId,
      args: [request],
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      workflowIdConflictPolicy: 'FAIL',
    });
    return { kind: 'started', handle };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    return { kind: 'already-running', handle: client.workflow.getHandle<typeof migrateDek>(workflowId) };
  }
}
