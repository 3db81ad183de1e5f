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

export async function rotationStatus(client: Client, reference: string): Promise<RotationStatus> {
  const workflowId = resolveRotationId(reference);
  const handle = client.workflow.getHandle<typeof rotateKek>(workflowId);
  let status: string;
  try {
    status = (await handle.describe()).status.name;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new RotationNotFoundError(`no rotation '${workflowId}'`);
    throw err;
  }
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
