import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { TypedSearchAttributes } from '@temporalio/common';
import { parseRotationRequest, rotationWorkflowId, type RotationRequest } from '../rotation/rotation-input';
import { progressQuery, RekeyFromKek, RekeyPhase, RekeyToKek, rotateKek, type RotationReport } from '../workflows';

export type StartOutcome =
  | { kind: 'started'; handle: WorkflowHandle<typeof rotateKek> }
  | { kind: 'already-running'; handle: WorkflowHandle<typeof rotateKek> }
  | { kind: 'already-done'; handle: WorkflowHandle<typeof rotateKek>; report: RotationReport };

/** The rotation's workflow id; dry runs and canaries get ids of their own, never in the way of the real rotation. */
export function workflowIdFor(request: RotationRequest, now = Date.now()): string {
  const base = rotationWorkflowId(request.from, request.to);
  if (request.dryRun) return `${base}-dry-run-${now}`;
  if (request.tenantId !== undefined) return `${base}-canary-${request.tenantId}-${now}`;
  return base;
}

/**
 * Checks the request's shape (InvalidRotationError says what to fix) and starts it under the id derived from its KEKs. A completed rotation of the same pair is reported as
 * already done instead of being redone; a failed, terminated or cancelled one may be started again.
 */
export async function startRotation(
  client: Client,
  request: RotationRequest,
  options: { taskQueue: string; workflowId?: string },
): Promise<StartOutcome> {
  parseRotationRequest(request);
  const workflowId = options.workflowId ?? workflowIdFor(request);
  const start = (workflowIdReusePolicy: 'ALLOW_DUPLICATE_FAILED_ONLY' | 'ALLOW_DUPLICATE') =>
    client.workflow.start(rotateKek, {
      taskQueue: options.taskQueue,
      workflowId,
      args: [request],
      workflowIdReusePolicy,
      workflowIdConflictPolicy: 'FAIL',
      typedSearchAttributes: new TypedSearchAttributes([
        { key: RekeyPhase, value: 'validate' },
        { key: RekeyFromKek, value: request.from },
        { key: RekeyToKek, value: request.to },
      ]),
    });
  try {
    return { kind: 'started', handle: await start('ALLOW_DUPLICATE_FAILED_ONLY') };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    const handle = client.workflow.getHandle<typeof rotateKek>(workflowId);
    const { status } = await handle.describe();
    if (status.name === 'RUNNING') return { kind: 'already-running', handle };
    const report = await handle.result();
    // An aborted run (or one that found nothing to do) ended with a report, not a failure: it may run again.
    if (report.outcome === 'aborted' || report.outcome === 'nothing-to-do') {
      return { kind: 'started', handle: await start('ALLOW_DUPLICATE') };
    }
    return { kind: 'already-done', handle, report };
  }
}

export class RotationNotFoundError extends Error {
  override readonly name = 'RotationNotFoundError';
}

/** A rotation is named by its workflow id, or by its KEKs as `from:to`. */
export function resolveRotationId(reference: string): string {
  const pair = /^([^:\s]+):([^:\s]+)$/.exec(reference);
  return pair ? rotationWorkflowId(pair[1]!, pair[2]!) : reference;
}

export interface RotationStatus {
  workflowId: string;
  /** Temporal's execution status: RUNNING, COMPLETED, FAILED, TERMINATED, ... */
  status: string;
  progress?: RotationReport;
  failure?: string;
}

export class RotationNotRunningError extends Error {
  override readonly name = 'RotationNotRunningError';
}

/** A rotation by workflow id or `from:to`; RotationNotFoundError for an unknown id or a workflow that is not one. */
export async function findRotation(
  client: Client,
  reference: string,
): Promise<{ handle: WorkflowHandle<typeof rotateKek>; status: string }> {
  const workflowId = resolveRotationId(reference);
  const handle = client.workflow.getHandle<typeof rotateKek>(workflowId);
  let description: Awaited<ReturnType<typeof handle.describe>>;
  try {
    description = await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new RotationNotFoundError(`no rotation '${workflowId}'`);
    throw err;
  }
  if (description.type !== 'rotateKek') throw new RotationNotFoundError(`'${workflowId}' is not a rotation`);
  return { handle, status: description.status.name };
}

/** A rotation that is still running (to pause, resume, abort or change); RotationNotRunningError otherwise. */
export async function runningRotation(client: Client, reference: string): Promise<WorkflowHandle<typeof rotateKek>> {
  const { handle, status } = await findRotation(client, reference);
  if (status !== 'RUNNING') {
    throw new RotationNotRunningError(`rotation ${handle.workflowId} is ${status.toLowerCase()}, not running`);
  }
  return handle;
}

export async function rotationStatus(client: Client, reference: string): Promise<RotationStatus> {
  const { handle, status } = await findRotation(client, reference);
  const { workflowId } = handle;
  if (status === 'RUNNING') return { workflowId, status, progress: await handle.query(progressQuery) };
  if (status === 'COMPLETED') return { workflowId, status, progress: await handle.result() };
  const failure = await handle.result().then(
    () => undefined,
    (err: unknown) => failureMessage(err),
  );
  return { workflowId, status, failure };
}

/** The innermost message of a workflow failure: the one that says what went wrong. */
export function failureMessage(err: unknown): string {
  let current: unknown = err;
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}
