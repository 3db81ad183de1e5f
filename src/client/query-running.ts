// Reading a running run's state by its query, for every surface (rekey status, the admin API): a query is answered by
// a worker, so a run no worker polls for (none started yet, or all of them stopped) cannot be read. Temporal then
// answers after its own timeout with "Failed to query Workflow", a line that tells the operator nothing; this says
// which run, which task queue and what to do, the same words on the CLI (exit 1) and the admin API (500).
import { isGrpcDeadlineError, type WorkflowHandle } from '@temporalio/client';
import type { QueryDefinition } from '@temporalio/common';
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
