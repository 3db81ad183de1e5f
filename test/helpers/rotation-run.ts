import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Pool } from 'pg';
import { Worker } from '@temporalio/worker';
import type { Activities } from '../../src/activities';
import type { DestroyReport } from '../../src/activities/kek';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { workflowIdFor } from '../../src/client/rotations';
import { destroyWorkflowIdOf } from '../../src/rotation/identity';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { rotateKek, type RotationReport } from '../../src/workflows';
import { keyspaceIn } from './keyspace';
import { resultWithin, workflowBundle } from './temporal';

/**
 * Runs one rotation of rekey's own table in `db` to its end, under its keyspace's workflow id, with a worker of its
 * own over `activities`; with `destroyKek`, also waits for that KEK's destruction workflow (started by the retire
 * step) and returns its report too.
 */
export async function runRotation(
  env: TestWorkflowEnvironment,
  activities: Activities,
  db: Pool,
  request: RotationRequest,
  options: { timeoutMs?: number; destroyKek?: string } = {},
): Promise<{ report: RotationReport; destroyed?: DestroyReport }> {
  const keyspace = await keyspaceIn(db);
  const taskQueue = `rotation-${randomUUID()}`;
  const worker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowBundle: workflowBundle(),
    activities,
  });
  return worker.runUntil(async () => {
    const handle = await env.client.workflow.start(rotateKek, {
      taskQueue,
      workflowId: workflowIdFor(request, keyspace),
      args: [request],
    });
    const report = await resultWithin<RotationReport>(handle, options.timeoutMs ?? 120_000);
    if (options.destroyKek === undefined) return { report };
    const destroyed = await resultWithin<DestroyReport>(
      env.client.workflow.getHandle(destroyWorkflowIdOf(BUILTIN_TARGET, keyspace, options.destroyKek)),
      60_000,
    );
    return { report, destroyed };
  });
}
