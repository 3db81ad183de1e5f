// What a rotation Schedule starts. A Schedule appends the time to the workflow ids it starts, so it cannot start the
// rotation itself under its keyspace's id; this workflow does, as a child that outlives it, and ends at once. If a
// rotation of the keyspace is already running (started by hand, or a previous schedule run still in grace), or one an
// older build started for the target under its old id, it starts nothing and says so.
import { TypedSearchAttributes, WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { ParentClosePolicy, patched, startChild, workflowInfo, WorkflowIdReusePolicy } from '@temporalio/workflow';
import { legacyRotationWorkflowId, rotationWorkflowId } from '../rotation/identity';
import type { RotationRequest } from '../rotation/rotation-input';
import { staticDetails, staticSummary } from '../rotation/web-ui';
import { steps } from './activity-proxies';
import { rotateKek } from './rotate-kek';
import { RekeyFromKek, RekeyPhase, RekeyTarget, RekeyToKek } from './search-attributes';

/** Marks launches that start the rotation under its keyspace's id (`kek-rotation-<target>.<db>`). */
export const KEYSPACE_LAUNCH_PATCH = 'rekey-keyspace-launch-1';

export interface ScheduledRotationResult {
  started: boolean;
  workflowId: string;
  note: string;
}

export async function scheduledRotation(request: RotationRequest): Promise<ScheduledRotationResult> {
  const target = request.target ?? 'rekey';
  let workflowId = legacyRotationWorkflowId(target);
  let rotation = request;
  if (patched(KEYSPACE_LAUNCH_PATCH)) {
    // A schedule created before keyspaces carries none: its target's keyspace on the worker that takes this step.
    const launch = await steps.keyspaceToLaunch({ target, ...(request.keyspace && { keyspace: request.keyspace }) });
    if (launch.legacyRunning !== undefined) {
      return {
        started: false,
        workflowId: legacyRotationWorkflowId(target),
        note: `a rotation of target '${target}' started by an older build is still running (${launch.legacyRunning}): skipped`,
      };
    }
    workflowId = rotationWorkflowId(target, launch.keyspace);
    rotation = { ...request, keyspace: launch.keyspace };
  }
  try {
    await startChild(rotateKek, {
      workflowId,
      args: [rotation],
      parentClosePolicy: ParentClosePolicy.ABANDON,
      staticSummary: staticSummary({ ...rotation, target }),
      staticDetails: staticDetails({ ...rotation, target }, `schedule (${workflowInfo().workflowId})`),
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
