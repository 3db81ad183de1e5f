// Starting a run and hearing its first step's verdict in one call (Temporal's Update-with-Start): a rotation or a
// migration that cannot succeed is refused at once, with the kind of the error that refused it, instead of being
// reported as started and failing a moment later. Used by startRotation and startMigration.
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowUpdateFailedError,
  type Client,
  type WithStartWorkflowOperation,
  type Workflow,
} from '@temporalio/client';
import type { UpdateDefinition } from '@temporalio/common';
import { formatDuration } from '../rotation/durations';
import { errorKind, errorType, failureMessage, NoVerdictError, RunFailedError } from '../errors';

/** How long a client waits for the verdict before it says the run started without one, and why. */
export const ANSWER_WITHIN_MS = 60_000;

export type Answered<R> =
  /** The first step's answer. */
  | { answered: true; answer: R; firstRunId: string }
  /**
   * Started, without a verdict: the worker that took it up is of a build that does not answer the update (a deploy
   * in progress). The run goes on, and its status says what it decides.
   */
  | { answered: false; firstRunId: string; why: string };

/**
 * Starts `start` and asks it `update`, which answers once the run's first step has decided. The step's refusal is
 * thrown as a RunFailedError (its message, the kind of its error type) once the refused run has closed; a run of that id already running throws
 * WorkflowExecutionAlreadyStartedError and starts nothing. No answer within `withinMs` (no worker polls the task
 * queue, or the step keeps retrying) throws a NoVerdictError (kind `failed`, code `no_verdict`) that says what the run
 * is doing: it stays started.
 */
export async function startAnswered<W extends Workflow, R>(
  client: Client,
  update: UpdateDefinition<R, []>,
  start: WithStartWorkflowOperation<W>,
  withinMs: number = ANSWER_WITHIN_MS,
): Promise<Answered<R>> {
  const { workflowId, taskQueue } = start.options;
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), withinMs);
  try {
    const asked = await client.withAbortSignal(deadline.signal, () =>
      client.workflow.startUpdateWithStart(update, { startWorkflowOperation: start, waitForStage: 'ACCEPTED' }),
    );
    const firstRunId = asked.workflowRunId!;
    try {
      const answer = await client.withAbortSignal(deadline.signal, () => asked.result());
      return { answered: true, answer, firstRunId };
    } catch (err) {
      if (!(err instanceof WorkflowUpdateFailedError)) throw err;
      // A worker of a build that lacks the update rejects it as having no handler: the run goes on. Anything else is
      // the first step's refusal (the run then fails with it, after recording its end).
      if (isUnknownUpdate(err)) return { answered: false, firstRunId, why: failureMessage(err) };
      // The refused run records its end before it fails with the refusal. The refusal is told once that run has
      // closed, so an operator who corrects the input and starts again is not told the refused run is still running.
      await client
        .withAbortSignal(deadline.signal, () =>
          client.workflow
            .getHandle(workflowId, firstRunId)
            .result()
            .catch(() => undefined),
        )
        .catch(() => undefined);
      throw new RunFailedError(failureMessage(err), errorKind(err), errorType(err));
    }
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError || err instanceof RunFailedError) throw err;
    if (!deadline.signal.aborted) throw err;
    throw await notAnswered(client, workflowId, String(taskQueue), withinMs);
  } finally {
    clearTimeout(timer);
  }
}

/** The SDK's rejection of an update the workflow has no handler for (its build predates the update). */
function isUnknownUpdate(err: WorkflowUpdateFailedError): boolean {
  return /^No registered handler for update: /.test(failureMessage(err));
}

/** What a run that gave no verdict in time is doing, as the server describes it. */
async function notAnswered(
  client: Client,
  workflowId: string,
  taskQueue: string,
  withinMs: number,
): Promise<NoVerdictError> {
  let started = `${workflowId} started`;
  let why = 'its first step has not decided yet';
  try {
    const handle = client.workflow.getHandle(workflowId);
    const description = await handle.describe();
    const firstRunId = description.raw.workflowExecutionInfo?.firstRunId || description.runId;
    started = `${workflowId}@${firstRunId} started`;
    const pending = description.raw.pendingActivities ?? [];
    if (description.status.name !== 'RUNNING') {
      why = `it is ${description.status.name.toLowerCase()}`;
    } else if (pending.length > 0) {
      why = pending
        .map(
          (a) =>
            `${a.activityType?.name} is at attempt ${a.attempt}` +
            (a.lastFailure?.message ? ` (last failure: ${a.lastFailure.message})` : ''),
        )
        .join('; ');
    } else {
      // A server that describes no pending activity (the time-skipping test server): what the history says.
      const events = (await handle.fetchHistory()).events ?? [];
      const scheduled = events.filter((e) => e.activityTaskScheduledEventAttributes);
      const closed = events.filter(
        (e) =>
          e.activityTaskCompletedEventAttributes ||
          e.activityTaskFailedEventAttributes ||
          e.activityTaskTimedOutEventAttributes ||
          e.activityTaskCanceledEventAttributes,
      ).length;
      if (!events.some((e) => e.workflowTaskCompletedEventAttributes)) {
        why = `no worker has taken it up (is a rekey worker polling task queue '${taskQueue}'?)`;
      } else if (scheduled.length > closed) {
        why = `${scheduled.at(-1)?.activityTaskScheduledEventAttributes?.activityType?.name} is running`;
      }
    }
  } catch (err) {
    why = `and describing it failed: ${(err as Error).message}`;
  }
  return new NoVerdictError(
    `${started}, but gave no verdict within ${formatDuration(withinMs)}: ${why}; it stays started: ` +
      `'rekey status ${workflowId}' follows it, 'rekey abort ${workflowId}' stops it`,
  );
}
