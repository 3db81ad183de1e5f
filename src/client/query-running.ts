// Reading a running run's state by its query, for every surface (rekey status, the admin API): a query is answered by
// a worker, so a run no worker polls for (none started yet, or all of them stopped) cannot be read. Temporal then
// answers after its own timeout with "Failed to query Workflow", a line that tells the operator nothing; this says
// which run, which task queue and what to do, the same words on the CLI (exit 1) and the admin API (500).
import { isGrpcDeadlineError, type Client, type WorkflowHandle } from '@temporalio/client';
import type { QueryDefinition } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { NoWorkerError } from '../errors';

/**
 * `handle`'s answer to `query`; a query no worker answered in time is a NoWorkerError naming the run (`what`, e.g.
 * `rotation kek-rotation-talos.…`) and the task queue its workers must poll, from the run's own description.
 */
export async function queryRunning<R>(
  handle: WorkflowHandle,
  query: QueryDefinition<R, []>,
  what: string,
  taskQueue: string | undefined,
  namespace: string,
): Promise<R> {
  try {
    return await handle.query(query);
  } catch (err) {
    if (!isGrpcDeadlineError(err)) throw err;
    const queue = taskQueue === undefined ? 'its task queue' : `task queue '${taskQueue}'`;
    throw new NoWorkerError(
      `${what} is running, but no worker answered its ${query.name} query in time: is a rekey worker of this ` +
        `database polling ${queue} in namespace '${namespace}'? Nothing moves until one does; start it (or the ` +
        `worker that stopped) and ask again`,
    );
  }
}

/**
 * Before a control (pause, resume, abort, confirm, grace, override) is sent to a running run: a run whose workflow
 * task waits and whose task queue no worker polls cannot take it, and Temporal would hold the caller's update
 * without an answer, for ever. Refused at once instead (NoWorkerError: exit 1, HTTP 500), naming the task queue.
 * Checked only where the run's description shows a workflow task waiting to be taken (a server that does not
 * describe one, such as the time-skipping test server, is not checked).
 */
export async function refuseControlWithoutWorker(client: Client, handle: WorkflowHandle, what: string): Promise<void> {
  const description = await handle.describe();
  const pending = description.raw.pendingWorkflowTask;
  if (pending?.state !== temporal.api.enums.v1.PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED) return;
  const taskQueue = description.taskQueue;
  // A worker that has just started is given a few seconds to make its first poll.
  for (const deadline = Date.now() + POLLER_WAIT_MS; ;) {
    const { pollers } = await client.workflowService.describeTaskQueue({
      namespace: client.options.namespace,
      taskQueue: { name: taskQueue },
      taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    });
    if ((pollers ?? []).length > 0) return;
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  // A run no worker ever took up (its history: started, a workflow task scheduled) has done nothing.
  const neverTaken = Number(description.raw.workflowExecutionInfo?.historyLength ?? 0) <= 2;
  throw new NoWorkerError(
    `${what} is running, but no worker polls its task queue '${taskQueue}' in namespace ` +
      `'${client.options.namespace}': nothing can take the control, and it was not ` +
      `sent. Start a rekey worker of this database on that task queue, then send it again` +
      (neverTaken
        ? `; no worker ever took this run up, so it has done nothing: to end it instead, temporal workflow terminate --workflow-id ${handle.workflowId} --reason "…"`
        : ''),
  );
}

const POLLER_WAIT_MS = 5_000;
