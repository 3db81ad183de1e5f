// What a rotation Schedule starts. A Schedule appends the time to the workflow ids it starts, so it cannot start the
// rotation itself under its target's id; this workflow does, as a child that outlives it, and ends at once. If a
// rotation of the target is already running (started by hand, or a previous schedule run still in grace), it
// starts nothing and says so.
import { TypedSearchAttributes, WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { ParentClosePolicy, startChild, workflowInfo, WorkflowIdReusePolicy } from '@temporalio/workflow';
import { rotationWorkflowId } from '../rotation/identity';
import type { RotationRequest } from '../rotation/rotation-input';
import { staticDetails, staticSummary } from '../rotation/web-ui';
import { rotateKek } from './rotate-kek';
import { RekeyFromKek, RekeyPhase, RekeyTarget, RekeyToKek } from './search-attributes';

export interface ScheduledRotationResult {
  started: boolean;
  workflowId: string;
  note: string;
}

export async function scheduledRotation(request: RotationRequest): Promise<ScheduledRotationResult> {
  const target = request.target ?? 'rekey';
  const workflowId = rotationWorkflowId(target);
  try {
    await startChild(rotateKek, {
      workflowId,
      args: [request],
      parentClosePolicy: ParentClosePolicy.ABANDON,
      staticSummary: staticSummary({ ...request, target }),
      staticDetails: staticDetails({ ...request, target }, `schedule (${workflowInfo().workflowId})`),
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      typedSearchAttributes: new TypedSearchAttributes([
        { key: RekeyPhase, value: 'validate' },
        { key: RekeyTarget, value: target },
        { key: RekeyFromKek, value: request.from },
        { key: RekeyToKek, value: request.to },
      ]),
    });
    return { started: true, workflowId, note: `started rotation ${workflowId}` };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    return { started: false, workflowId, note: `a rotation of target '${target}' is already running: skipped` };
  }
}
