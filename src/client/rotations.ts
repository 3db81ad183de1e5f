import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandle } from '@temporalio/client';
import { TypedSearchAttributes } from '@temporalio/common';
import { rotationWorkflowId, type RotationRequest } from '../rotation/rotation-input';
import { RekeyFromKek, RekeyPhase, RekeyToKek, rotateKek, type RotationReport } from '../workflows';

export type StartOutcome =
  | { kind: 'started'; handle: WorkflowHandle<typeof rotateKek> }
  | { kind: 'already-running'; handle: WorkflowHandle<typeof rotateKek> }
  | { kind: 'already-done'; handle: WorkflowHandle<typeof rotateKek>; report: RotationReport };

/**
 * Starts a rotation under the id derived from its KEKs. A completed rotation of the same pair is reported as
 * already done instead of being redone; a failed, terminated or cancelled one may be started again.
 */
export async function startRotation(
  client: Client,
  request: RotationRequest,
  options: { taskQueue: string; workflowId?: string },
): Promise<StartOutcome> {
  const workflowId = options.workflowId ?? rotationWorkflowId(request.from, request.to);
  try {
    const handle = await client.workflow.start(rotateKek, {
      taskQueue: options.taskQueue,
      workflowId,
      args: [request],
      workflowIdReusePolicy: 'ALLOW_DUPLICATE_FAILED_ONLY',
      workflowIdConflictPolicy: 'FAIL',
      typedSearchAttributes: new TypedSearchAttributes([
        { key: RekeyPhase, value: 'validate' },
        { key: RekeyFromKek, value: request.from },
        { key: RekeyToKek, value: request.to },
      ]),
    });
    return { kind: 'started', handle };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    const handle = client.workflow.getHandle<typeof rotateKek>(workflowId);
    const { status } = await handle.describe();
    if (status.name === 'RUNNING') return { kind: 'already-running', handle };
    return { kind: 'already-done', handle, report: await handle.result() };
  }
}
