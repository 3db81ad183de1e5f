import {
  ScheduleOverlapPolicy,
  WorkflowFailedError,
  WorkflowNotFoundError,
  type Client,
  type ScheduleExecutionResult,
  type ScheduleSpec,
} from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { Keyspace } from '../rotation/identity';
import type { RunState } from '../rotation/run-status';
import type { RotationRequest } from '../rotation/rotation-input';
import { parseDuration } from '../rotation/durations';
import { BUILTIN_TARGET } from '../targets/builtin';
import type { checkRotationSchedule, scheduledRotation, scheduleNotices, ScheduledRotationResult } from '../workflows';
import { noticeStateQuery } from '../workflows/messages';
import { failureMessage, opIdOf, rotationStatus } from './rotations';
import { errorKind, InvalidRotationError, NoWorkerError } from '../errors';

export const DEFAULT_SCHEDULE_ID = 'rekey-quarterly';
/** 03:00 UTC on the first day of every quarter. */
export const QUARTERLY_CRON = '0 3 1 1,4,7,10 *';

export interface RotationScheduleOptions {
  scheduleId?: string;
  cron?: string;
  every?: string;
  taskQueue: string;
  gracePeriod?: string;
  /** A run finds nothing to do if the active KEK is younger than this (someone rotated by hand meanwhile). */
  minKekAge?: string;
  /** The target it rotates (default rekey's own). */
  target?: string;
  /** The target's keyspace, as the creator's database resolves it: each run rotates that one, and checks it. */
  keyspace: Keyspace;
  /** Announce each rotation this long before it starts (a log event, a metric, and the webhook if given). */
  notifyBefore?: string;
  /** Where the signed JSON notice is POSTed. */
  notifyUrl?: string;
}

/** The workflow that gives notice of a schedule's rotations. */
export function noticeWorkflowId(scheduleId: string): string {
  return `rekey-schedule-notice-${scheduleId}`;
}

/**
 * A Temporal Schedule that rotates a target's active KEK to a newly generated one. Each run starts the rotation under
 * its keyspace's id (see scheduledRotation), the keyspace recorded here in the run's input: a rotation still running,
 * whoever started it, is never joined by a second one.
 */
export async function createRotationSchedule(client: Client, options: RotationScheduleOptions): Promise<string> {
  checkNoticeOptions(options);
  const scheduleId = options.scheduleId ?? DEFAULT_SCHEDULE_ID;
  const spec: ScheduleSpec = options.every
    ? { intervals: [{ every: options.every }] }
    : { cronExpressions: [options.cron ?? QUARTERLY_CRON] };
  const request: RotationRequest = {
    target: options.target ?? 'rekey',
    keyspace: options.keyspace.id,
    from: 'current',
    to: 'new',
    gracePeriod: options.gracePeriod ?? '7d',
    minKekAge: options.minKekAge ?? '30d',
  };
  await checkScheduledRotation(client, request, options.taskQueue, scheduleId);
  await client.schedule.create<typeof scheduledRotation>({
    scheduleId,
    spec,
    action: {
      type: 'startWorkflow',
      workflowType: 'scheduledRotation',
      args: [request],
      taskQueue: options.taskQueue,
      workflowId: `kek-rotation-schedule-${scheduleId}`,
    },
    policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 day' },
    memo: { spec: options.every ? `every ${options.every}` : (options.cron ?? QUARTERLY_CRON) },
  });
  if (options.notifyBefore !== undefined) {
    // Replaces the notices of an earlier schedule of the same id, if one is still running.
    await client.workflow.start<typeof scheduleNotices>('scheduleNotices', {
      taskQueue: options.taskQueue,
      workflowId: noticeWorkflowId(scheduleId),
      args: [
        {
          scheduleId,
          target: request.target ?? 'rekey',
          notifyBefore: options.notifyBefore,
          ...(options.notifyUrl !== undefined && { webhookUrl: options.notifyUrl }),
        },
      ],
      workflowIdConflictPolicy: 'TERMINATE_EXISTING',
      staticSummary: `notice of ${scheduleId}'s rotations, ${options.notifyBefore} before`,
    });
  }
  return scheduleId;
}

/**
 * Asks a worker of the task queue whether the schedule's runs can do their work (checkRotationSchedule): a target
 * whose key source cannot generate a KEK is refused (InvalidRotationError) before the schedule exists, not at its
 * first run. Refused as well when no worker polls the task queue.
 */
async function checkScheduledRotation(
  client: Client,
  request: RotationRequest,
  taskQueue: string,
  scheduleId: string,
): Promise<void> {
  if (!(await hasPoller(client, taskQueue))) {
    throw new NoWorkerError(
      `no worker polls task queue '${taskQueue}' (namespace ${client.options.namespace}): start the worker of target '${request.target ?? 'rekey'}' first; a schedule is checked by it, and each run needs it`,
    );
  }
  try {
    await client.workflow.execute<typeof checkRotationSchedule>('checkRotationSchedule', {
      taskQueue,
      workflowId: `rekey-schedule-check-${scheduleId}`,
      args: [request],
      workflowExecutionTimeout: '1 minute',
      workflowIdConflictPolicy: 'TERMINATE_EXISTING',
    });
  } catch (err) {
    if (!(err instanceof WorkflowFailedError)) throw err;
    const reason = failureMessage(err);
    if (errorKind(err) === 'invalid') throw new InvalidRotationError(reason);
    throw new NoWorkerError(`the worker could not check the schedule: ${reason}`);
  }
}

/** A worker polls the task queue (one that has just started is given a few seconds to make its first poll). */
async function hasPoller(client: Client, taskQueue: string): Promise<boolean> {
  for (const deadline = Date.now() + POLLER_WAIT_MS; ;) {
    const { pollers } = await client.workflowService.describeTaskQueue({
      namespace: client.options.namespace,
      taskQueue: { name: taskQueue },
      taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    });
    if ((pollers ?? []).length > 0) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

const POLLER_WAIT_MS = 5_000;

/** Checks a schedule's notice options before anything is created. */
export function checkNoticeOptions(options: { notifyBefore?: string; notifyUrl?: string }): void {
  if (options.notifyUrl !== undefined && options.notifyBefore === undefined) {
    throw new InvalidRotationError('--notify-url needs --notify-before (how long before each rotation to notify)');
  }
  if (options.notifyBefore !== undefined && !((parseDuration(options.notifyBefore) ?? 0) > 0)) {
    throw new InvalidRotationError(`--notify-before '${options.notifyBefore}' is not a duration such as 7d`);
  }
  if (options.notifyUrl !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(options.notifyUrl);
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      throw new InvalidRotationError(`--notify-url '${options.notifyUrl}' is not an http(s) URL`);
    }
  }
}

export interface ScheduleSummary {
  scheduleId: string;
  /** The target each run rotates, from the schedule's recorded request ('rekey' where it records none). */
  target: string;
  /** The keyspace recorded when the schedule was created (every run rotates that one), if it records one. */
  keyspace?: string;
  spec: string;
  nextRuns: string[];
  /** The launchers of the recent runs (see `runs` for what came of each). */
  recentRuns: string[];
  paused: boolean;
  /** When the next rotation is announced, if the schedule gives notice (and it has not gone out yet). */
  nextNotice?: string;
  /** The rotation the last notice announced. */
  noticedFor?: string;
  /** The latest runs (up to 5), newest first: the rotation each started and its one status, or why it started none. */
  runs: ScheduleRun[];
}

export interface ScheduleRun {
  /** When the schedule took the action. */
  at: string;
  /** The launcher workflow the schedule started. */
  launcher: string;
  /** The rotation it started (`<workflow id>@<first run id>`), if it started one. */
  rotation?: string;
  /** The rotation's one status (src/rotation/run-status.ts), or the launcher's own while it has started none. */
  state: RunState | 'skipped' | 'launching';
  line: string;
}

/** The schedules that start rotations (their launcher), as Temporal lists them. */
export async function* rotationSchedules(client: Client) {
  for await (const listed of client.schedule.list()) {
    if (listed.action?.type === 'startWorkflow' && listed.action.workflowType === 'scheduledRotation') yield listed;
  }
}

export async function listRotationSchedules(client: Client): Promise<ScheduleSummary[]> {
  const summaries: ScheduleSummary[] = [];
  for await (const listed of rotationSchedules(client)) {
    const described = await client.schedule.getHandle(listed.scheduleId).describe();
    const request =
      described.action.type === 'startWorkflow'
        ? (described.action.args?.[0] as Partial<RotationRequest> | undefined)
        : undefined;
    summaries.push({
      scheduleId: listed.scheduleId,
      target: request?.target ?? BUILTIN_TARGET,
      ...(request?.keyspace !== undefined && { keyspace: request.keyspace }),
      spec: typeof described.memo?.spec === 'string' ? described.memo.spec : 'see the Web UI',
      nextRuns: described.info.nextActionTimes.slice(0, 3).map((d) => d.toISOString()),
      recentRuns: described.info.recentActions.map((a) => a.action.workflow.workflowId),
      paused: described.state.paused,
      ...(await noticeOf(client, listed.scheduleId)),
      // The latest runs, newest first.
      runs: await Promise.all(
        [...described.info.recentActions]
          .reverse()
          .slice(0, RUNS_LISTED)
          .map((action) => scheduleRun(client, action)),
      ),
    });
  }
  return summaries;
}

const RUNS_LISTED = 5;

/** What one run of a schedule did: the rotation its launcher started, in the one status, or why it started none. */
async function scheduleRun(client: Client, action: ScheduleExecutionResult): Promise<ScheduleRun> {
  const { workflowId, firstExecutionRunId } = action.action.workflow;
  const base = { at: action.takenAt.toISOString(), launcher: workflowId };
  const launcher = client.workflow.getHandle(workflowId, firstExecutionRunId);
  const described = await launcher.describe().catch(() => undefined);
  if (described?.status.name === 'RUNNING') {
    return { ...base, state: 'launching', line: 'its launcher has not ended yet (does a worker poll the task queue?)' };
  }
  // The launcher's history says which rotation it started (its child), on any server, visibility or not.
  const history = await launcher.fetchHistory().catch(() => undefined);
  const child = history?.events
    ?.map((event) => event.childWorkflowExecutionStartedEventAttributes?.workflowExecution)
    .find((execution) => execution?.workflowId && execution.runId);
  if (child?.workflowId && child.runId) {
    const rotation = opIdOf(child.workflowId, child.runId);
    const status = await rotationStatus(client, rotation).catch(() => undefined);
    if (status) return { ...base, rotation, state: status.run.state, line: status.run.line };
    return { ...base, rotation, state: 'running', line: 'started; its status cannot be read now' };
  }
  if (described === undefined || history === undefined) {
    return { ...base, state: 'launching', line: 'its launcher cannot be read now' };
  }
  const result = await launcher.result().then(
    (value: ScheduledRotationResult) => value,
    (err: unknown) => ({ started: false, note: `its launcher failed: ${failureMessage(err)}` }),
  );
  return { ...base, state: result.started ? 'launching' : 'skipped', line: result.note };
}

async function noticeOf(
  client: Client,
  scheduleId: string,
): Promise<Pick<ScheduleSummary, 'nextNotice' | 'noticedFor'>> {
  const state = await client.workflow
    .getHandle<typeof scheduleNotices>(noticeWorkflowId(scheduleId))
    .query(noticeStateQuery)
    .catch(() => undefined);
  if (!state || state.ended) return {};
  const pending = state.nextNotice !== undefined && state.noticedFor !== state.nextRotation;
  return {
    ...(pending && { nextNotice: state.nextNotice }),
    ...(state.noticedFor !== undefined && { noticedFor: state.noticedFor }),
  };
}

/** Deletes a rotation schedule, and ends the workflow that gave notice of its rotations, if any. */
export async function deleteRotationSchedule(client: Client, scheduleId: string): Promise<void> {
  await client.schedule.getHandle(scheduleId).delete();
  await client.workflow
    .getHandle(noticeWorkflowId(scheduleId))
    .terminate('its schedule was deleted')
    .catch((err: unknown) => {
      if (!(err instanceof WorkflowNotFoundError)) throw err;
    });
}
