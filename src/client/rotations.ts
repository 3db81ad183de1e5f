// Starting and finding rotations, for every surface (CLI, admin API, demo, schedules): one place decides a rotation's
// identity. A rotation is its keyspace's (a target's table in one database): at most one runs per keyspace, whoever
// starts it, and a new one may start once the last has ended. Whether a rotation was already done is decided by the
// registry (in the workflow), never by an old workflow id.
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
import {
  dryRunWorkflowId,
  firstReleaseRotationWorkflowId,
  isRotationWorkflowId,
  legacyRotationWorkflowId,
  rotationWorkflowId,
  type Keyspace,
} from '../rotation/identity';
import { parseRotationRequest, refuseShortRestoreWindow, type RotationRequest } from '../rotation/rotation-input';
import { BUILTIN_TARGET } from '../targets/builtin';
import { TARGET_NAME } from '../targets/target';
import type { rotateKek, RotationReport } from '../workflows';
import { progressQuery, validatedUpdate, type RotationValidated } from '../workflows/messages';
import { RekeyFromKek, RekeyPhase, RekeyTarget, RekeyToKek } from '../workflows/search-attributes';
import { queryRunning, refuseControlWithoutWorker } from './query-running';
import { startAnswered } from './start-answered';
import {
  failureOf,
  failureMessage,
  InvalidRotationError,
  RotationNotFoundError,
  RotationNotRunningError,
  type ErrorKind,
} from '../errors';

export { rotationWorkflowId, failureMessage };

/**
 * The keyspace of a target, as the surface asking sees it (its DATABASE_URL, its REKEY_CONFIG); undefined when it
 * knows no target of that name (the reference is then taken as a workflow id).
 */
export type KeyspaceLookup = (target: string) => Promise<Keyspace | undefined>;

/** A rotation's id in its keyspace; dry runs write nothing, so they get ids of their own derived from it. */
export function workflowIdFor(request: RotationRequest, keyspace: Keyspace, now = Date.now()): string {
  const target = request.target ?? BUILTIN_TARGET;
  return request.dryRun ? dryRunWorkflowId(target, keyspace, now) : rotationWorkflowId(target, keyspace);
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
 * Checks the request's shape (InvalidRotationError says what to fix), starts it under its keyspace's id, with the
 * keyspace in the request (every step of the run checks it), and waits for its validate step's verdict, in one call
 * (Update-with-Start). A refusal is thrown as a RunFailedError with the kind of the error that refused it (an unknown
 * KEK, a missing table: invalid; legacy values left: refused), and nothing was written. If a rotation of that keyspace
 * is running, or one of the target that an older build started under `kek-rotation-<target>`, nothing starts and the
 * running one is returned.
 */
export async function startRotation(
  client: Client,
  request: RotationRequest,
  options: { taskQueue: string; keyspace: Keyspace; startedBy?: StartedBy; answerWithinMs?: number },
): Promise<StartOutcome> {
  const settings = parseRotationRequest(request);
  refuseShortRestoreWindow(request, settings);
  const { keyspace } = options;
  if (request.keyspace !== undefined && request.keyspace !== keyspace.id) {
    throw new InvalidRotationError(`the request names keyspace ${request.keyspace}, not ${keyspace.id}`);
  }
  const workflowId = workflowIdFor(request, keyspace);
  const description = { ...request, target: settings.target };
  if (!settings.dryRun) {
    const legacy = await runningUnderLegacyId(client, legacyRotationWorkflowId(settings.target));
    if (legacy) return { kind: 'already-running', ...legacy };
  }
  try {
    const start = new WithStartWorkflowOperation<typeof rotateKek>('rotateKek', {
      taskQueue: options.taskQueue,
      workflowId,
      args: [{ ...request, keyspace: keyspace.id }],
      // What the Web UI shows of the run before anyone queries it (src/rotation/web-ui.ts).
      staticSummary: staticSummary(description),
      staticDetails: staticDetails({ ...description, keyspace: keyspace.id }, options.startedBy ?? 'a rekey client'),
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
 * A rotation of the target that a build before keyspaces started under `kek-rotation-<target>` and that still runs
 * (it finishes on this build's workers): a new start waits for it. That id names no database, so this holds back a
 * start in every database with a target of that name, until it ends.
 */
async function runningUnderLegacyId(
  client: Client,
  legacyWorkflowId: string,
): Promise<{ handle: WorkflowHandle<typeof rotateKek>; opId: string } | undefined> {
  const handle = client.workflow.getHandle<typeof rotateKek>(legacyWorkflowId);
  const description = await handle.describe().catch((err: unknown) => {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  });
  if (description?.type !== 'rotateKek' || description.status.name !== 'RUNNING') return undefined;
  const firstRun = description.raw.workflowExecutionInfo?.firstRunId || description.runId;
  return { handle, opId: opIdOf(handle.workflowId, firstRun) };
}

/** Where to look for a rotation: its workflow id, its chain's first run, and an older build's id to try too. */
export interface RotationReference {
  workflowId: string;
  firstRunId?: string;
  /** A target named by its name: the id an older build gave its rotations, still looked at (one may run there). */
  legacyWorkflowId?: string;
}

/**
 * What names a rotation: an op id (`<workflow id>@<first run id>`), a workflow id (this build's
 * `kek-rotation-<target>.<db>`, or an older build's), a target name (its latest rotation in the keyspace `lookup`
 * resolves: the database the caller is pointed at), or `from:to` (a rotation started before targets existed).
 */
export async function resolveRotationReference(reference: string, lookup?: KeyspaceLookup): Promise<RotationReference> {
  const at = reference.lastIndexOf('@');
  if (at > 0) return { workflowId: reference.slice(0, at), firstRunId: reference.slice(at + 1) };
  const pair = /^([^:\s]+):([^:\s]+)$/.exec(reference);
  if (pair) return { workflowId: firstReleaseRotationWorkflowId(pair[1]!, pair[2]!) };
  if (isRotationWorkflowId(reference) || !TARGET_NAME.test(reference)) return { workflowId: reference };
  if (lookup === undefined) {
    throw new InvalidRotationError(
      `'${reference}' names a rotation by its target: which database's is known only with DATABASE_URL set (or give the rotation's workflow id or op id)`,
    );
  }
  const keyspace = await lookup(reference);
  if (keyspace === undefined) return { workflowId: reference };
  return { workflowId: rotationWorkflowId(reference, keyspace), legacyWorkflowId: legacyRotationWorkflowId(reference) };
}

export interface FoundRotation {
  handle: WorkflowHandle<typeof rotateKek>;
  /** Temporal's status of the chain's latest run: RUNNING, COMPLETED, FAILED, TERMINATED, ... */
  status: string;
  opId: string;
}

/**
 * A rotation by reference; RotationNotFoundError for an unknown one or a workflow that is not a rotation. A target
 * name finds the rotation of its keyspace, or one an older build started for the target under its old id while that
 * one still runs.
 */
export async function findRotation(client: Client, reference: string, lookup?: KeyspaceLookup): Promise<FoundRotation> {
  const resolved = await resolveRotationReference(reference, lookup);
  if (resolved.legacyWorkflowId !== undefined) {
    const legacy = await runningUnderLegacyId(client, resolved.legacyWorkflowId);
    if (legacy) return { ...legacy, status: 'RUNNING' };
  }
  const { workflowId, firstRunId } = resolved;
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
export async function runningRotation(
  client: Client,
  reference: string,
  lookup?: KeyspaceLookup,
): Promise<WorkflowHandle<typeof rotateKek>> {
  const { handle, status, opId } = await findRotation(client, reference, lookup);
  if (status !== 'RUNNING') {
    throw new RotationNotRunningError(`rotation ${opId} is ${status.toLowerCase()}, not running`);
  }
  await refuseControlWithoutWorker(client, handle, `rotation ${opId}`);
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
  /** The type of that error (ApplicationNotReady, RetireRefusedError, …). */
  failureType?: string;
  /** What every surface names it by (errorAnswer: application_not_ready, or the kind's code), and what to do next. */
  error?: string;
  next?: string;
  startedAt?: Date;
  closedAt?: Date;
  /** Steps that failed and are being retried now (describe()'s pending activities past their first attempt). */
  retrying?: RetryingStep[];
  /** The one status every surface shows (src/rotation/run-status.ts), as of the moment it was read. */
  run: RunStatus;
}

export async function rotationStatus(
  client: Client,
  reference: string,
  lookup?: KeyspaceLookup,
): Promise<RotationStatus> {
  const { handle, status, opId } = await findRotation(client, reference, lookup);
  const { workflowId } = handle;
  const description = await handle.describe().catch(() => undefined);
  const times = { startedAt: description?.startTime, closedAt: description?.closeTime };
  let found: Omit<RotationStatus, 'run'>;
  if (status === 'RUNNING') {
    const progress = await queryRunning(
      handle,
      progressQuery,
      `rotation ${opId}`,
      description?.taskQueue,
      client.options.namespace,
    );
    const retrying = retryingSteps(description?.raw.pendingActivities);
    found = { workflowId, opId, status, progress, ...times, ...(retrying.length > 0 && { retrying }) };
  } else if (status === 'COMPLETED') {
    found = { workflowId, opId, status, progress: await handle.result(), ...times };
  } else {
    const failed = await handle.result().then(
      () => undefined,
      (err: unknown) => failureOf(err),
    );
    found = { workflowId, opId, status, ...failed, ...times };
  }
  // A run that failed leaves no progress to read without a worker: the step it failed in is its RekeyPhase.
  const phase = description?.typedSearchAttributes.get(RekeyPhase);
  return {
    ...found,
    run: rotationRunStatus({ execution: status, ...found, ...(phase !== undefined && { phase }) }, Date.now()),
  };
}
