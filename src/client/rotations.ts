// Starting and finding rotations, for every surface (CLI, admin API, demo, schedules): one place decides a rotation's
// identity. A rotation is its target's: at most one runs per target, whoever starts it, and a new one may start once
// the last has ended. Whether a rotation was already done is decided by the registry (in the workflow), never by an
// old workflow id.
import { retryingSteps, rotationRunStatus, type RetryingStep, type RunStatus } from '../rotation/run-status';
import { staticDetails, staticSummary, type StartedBy } from '../rotation/web-ui';
import {
  WithStartWorkflowOperation,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { TypedSearchAttributes } from '@temporalio/common';
import { rotationWorkflowId } from '../rotation/identity';
import { parseRotationRequest, type RotationRequest } from '../rotation/rotation-input';
import { BUILTIN_TARGET } from '../targets/builtin';
import type { rotateKek, RotationReport } from '../workflows';
import { progressQuery, validatedUpdate, type RotationValidated } from '../workflows/messages';
import { RekeyFromKek, RekeyPhase, RekeyTarget, RekeyToKek } from '../workflows/search-attributes';
import { startAnswered } from './start-answered';
import { errorKind, failureMessage, RotationNotFoundError, RotationNotRunningError, type ErrorKind } from '../errors';

export { rotationWorkflowId, failureMessage };

/** Dry runs write nothing, so they get ids of their own and never stand in the way of a real rotation. */
export function workflowIdFor(request: RotationRequest, now = Date.now()): string {
  const base = rotationWorkflowId(request.target ?? BUILTIN_TARGET);
  return request.dryRun ? `${base}-dry-run-${now}` : base;
}

/** One rotation (a workflow id and the first run of its continue-as-new chain), as `rotation-status` names it. */
export function opIdOf(workflowId: string, firstRunId: string): string {
  return `${workflowId}@${firstRunId}`;
}

export type StartOutcome =
  | {
      kind: 'started';
      handle: WorkflowHandle<typeof rotateKek>;
      opId: string;
      /**
       * What validate established (absent only when the worker's build predates the `validated` update; `unanswered`
       * then says so). A run that ended there says so in its `outcome` (nothing to do).
       */
      validated?: RotationValidated;
      unanswered?: string;
    }
  | { kind: 'already-running'; handle: WorkflowHandle<typeof rotateKek>; opId: string };

/**
 * Checks the request's shape (InvalidRotationError says what to fix), starts it under its target's id and waits for
 * its validate step's verdict, in one call (Update-with-Start). A refusal is thrown as a RunFailedError with the kind
 * of the error that refused it (an unknown KEK, a missing table: invalid; legacy values left: refused), and nothing
 * was written. If a rotation of that target is running, nothing starts and the running one is returned.
 */
export async function startRotation(
  client: Client,
  request: RotationRequest,
  options: { taskQueue: string; workflowId?: string; startedBy?: StartedBy; answerWithinMs?: number },
): Promise<StartOutcome> {
  const settings = parseRotationRequest(request);
  const workflowId = options.workflowId ?? workflowIdFor(request);
  const description = { ...request, target: settings.target };
  try {
    const start = new WithStartWorkflowOperation<typeof rotateKek>('rotateKek', {
      taskQueue: options.taskQueue,
      workflowId,
      args: [request],
      // What the Web UI shows of the run before anyone queries it (src/rotation/web-ui.ts).
      staticSummary: staticSummary(description),
      staticDetails: staticDetails(description, options.startedBy ?? 'a rekey client'),
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      workflowIdConflictPolicy: 'FAIL',
      typedSearchAttributes: new TypedSearchAttributes([
        { key: RekeyPhase, value: 'validate' },
        { key: RekeyTarget, value: settings.target },
        { key: RekeyFromKek, value: request.from },
        { key: RekeyToKek, value: request.to },
      ]),
    });
    const started = await startAnswered(client, validatedUpdate, start, options.answerWithinMs);
    const handle = client.workflow.getHandle<typeof rotateKek>(workflowId, undefined, {
      firstExecutionRunId: started.firstRunId,
    });
    const opId = opIdOf(workflowId, started.firstRunId);
    return started.answered
      ? { kind: 'started', handle, opId, validated: started.answer }
      : { kind: 'started', handle, opId, unanswered: started.why };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    const { handle, opId } = await findRotation(client, workflowId);
    return { kind: 'already-running', handle, opId };
  }
}

/**
 * What names a rotation: an op id (`<workflow id>@<first run id>`), a workflow id, a target name (its latest
 * rotation), or `from:to` (a rotation started before targets existed).
 */
export function resolveRotationReference(reference: string): { workflowId: string; firstRunId?: string } {
  const at = reference.lastIndexOf('@');
  if (at > 0) return { workflowId: reference.slice(0, at), firstRunId: reference.slice(at + 1) };
  const pair = /^([^:\s]+):([^:\s]+)$/.exec(reference);
  if (pair) return { workflowId: `kek-rotation-${pair[1]}-to-${pair[2]}` };
  if (reference.startsWith('kek-rotation-')) return { workflowId: reference };
  return { workflowId: rotationWorkflowId(reference) };
}

export interface FoundRotation {
  handle: WorkflowHandle<typeof rotateKek>;
  /** Temporal's status of the chain's latest run: RUNNING, COMPLETED, FAILED, TERMINATED, ... */
  status: string;
  opId: string;
}

/** A rotation by reference; RotationNotFoundError for an unknown one or a workflow that is not a rotation. */
export async function findRotation(client: Client, reference: string): Promise<FoundRotation> {
  const { workflowId, firstRunId } = resolveRotationReference(reference);
  const latest = client.workflow.getHandle<typeof rotateKek>(workflowId);
  let description: Awaited<ReturnType<typeof latest.describe>>;
  try {
    description = await latest.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new RotationNotFoundError(`no rotation '${reference}'`);
    throw err;
  }
  if (description.type !== 'rotateKek') throw new RotationNotFoundError(`'${workflowId}' is not a rotation`);
  const latestChain = description.raw.workflowExecutionInfo?.firstRunId || description.runId;
  if (firstRunId === undefined || firstRunId === latestChain) {
    return { handle: latest, status: description.status.name, opId: opIdOf(workflowId, latestChain) };
  }
  // An earlier rotation of the same target: its chain has ended, and its result follows the chain to its end.
  const handle = client.workflow.getHandle<typeof rotateKek>(workflowId, undefined, {
    firstExecutionRunId: firstRunId,
  });
  try {
    const first = await client.workflow.getHandle<typeof rotateKek>(workflowId, firstRunId).describe();
    const status = await handle.result().then(
      () => 'COMPLETED',
      () => (first.status.name === 'CONTINUED_AS_NEW' ? 'FAILED' : first.status.name),
    );
    return { handle, status, opId: opIdOf(workflowId, firstRunId) };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new RotationNotFoundError(`no rotation '${reference}'`);
    throw err;
  }
}

/** A rotation that is still running (to pause, resume, abort, confirm or change); RotationNotRunningError otherwise. */
export async function runningRotation(client: Client, reference: string): Promise<WorkflowHandle<typeof rotateKek>> {
  const { handle, status, opId } = await findRotation(client, reference);
  if (status !== 'RUNNING') {
    throw new RotationNotRunningError(`rotation ${opId} is ${status.toLowerCase()}, not running`);
  }
  return handle;
}

export interface RotationStatus {
  workflowId: string;
  opId: string;
  /** Temporal's execution status: RUNNING, COMPLETED, FAILED, TERMINATED, ... */
  status: string;
  progress?: RotationReport;
  failure?: string;
  /** The kind of the error the run failed with (its exit code and HTTP status). */
  failureKind?: ErrorKind;
  startedAt?: Date;
  closedAt?: Date;
  /** Steps that failed and are being retried now (describe()'s pending activities past their first attempt). */
  retrying?: RetryingStep[];
  /** The one status every surface shows (src/rotation/run-status.ts), as of the moment it was read. */
  run: RunStatus;
}

export async function rotationStatus(client: Client, reference: string): Promise<RotationStatus> {
  const { handle, status, opId } = await findRotation(client, reference);
  const { workflowId } = handle;
  const description = await handle.describe().catch(() => undefined);
  const times = { startedAt: description?.startTime, closedAt: description?.closeTime };
  let found: Omit<RotationStatus, 'run'>;
  if (status === 'RUNNING') {
    const progress = await handle.query(progressQuery);
    const retrying = retryingSteps(description?.raw.pendingActivities);
    found = { workflowId, opId, status, progress, ...times, ...(retrying.length > 0 && { retrying }) };
  } else if (status === 'COMPLETED') {
    found = { workflowId, opId, status, progress: await handle.result(), ...times };
  } else {
    const failed = await handle.result().then(
      () => undefined,
      (err: unknown) => ({ failure: failureMessage(err), failureKind: errorKind(err) }),
    );
    found = { workflowId, opId, status, ...failed, ...times };
  }
  return {
    ...found,
    run: rotationRunStatus({ execution: status, ...found }, Date.now()),
  };
}
