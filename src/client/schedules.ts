import { ScheduleOverlapPolicy, type Client, type ScheduleSpec } from '@temporalio/client';
import type { RotationRequest } from '../rotation/rotation-input';
import { scheduledRotation } from '../workflows';

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
}

/**
 * A Temporal Schedule that rotates a target's active KEK to a newly generated one. Each run starts the rotation under
 * its target's id (see scheduledRotation): a rotation still running, whoever started it, is never joined by a
 * second one.
 */
export async function createRotationSchedule(client: Client, options: RotationScheduleOptions): Promise<string> {
  const scheduleId = options.scheduleId ?? DEFAULT_SCHEDULE_ID;
  const spec: ScheduleSpec = options.every
    ? { intervals: [{ every: options.every }] }
    : { cronExpressions: [options.cron ?? QUARTERLY_CRON] };
  const request: RotationRequest = {
    target: options.target ?? 'rekey',
    from: 'current',
    to: 'new',
    gracePeriod: options.gracePeriod ?? '7d',
    minKekAge: options.minKekAge ?? '30d',
  };
  await client.schedule.create({
    scheduleId,
    spec,
    action: {
      type: 'startWorkflow',
      workflowType: scheduledRotation,
      args: [request],
      taskQueue: options.taskQueue,
      workflowId: `kek-rotation-schedule-${scheduleId}`,
    },
    policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 day' },
    memo: { spec: options.every ? `every ${options.every}` : (options.cron ?? QUARTERLY_CRON) },
  });
  return scheduleId;
}

export interface ScheduleSummary {
  scheduleId: string;
  spec: string;
  nextRuns: string[];
  recentRuns: string[];
  paused: boolean;
}

export async function listRotationSchedules(client: Client): Promise<ScheduleSummary[]> {
  const summaries: ScheduleSummary[] = [];
  for await (const listed of client.schedule.list()) {
    if (listed.action?.type !== 'startWorkflow' || listed.action.workflowType !== 'scheduledRotation') continue;
    const described = await client.schedule.getHandle(listed.scheduleId).describe();
    summaries.push({
      scheduleId: listed.scheduleId,
      spec: typeof described.memo?.spec === 'string' ? described.memo.spec : 'see the Web UI',
      nextRuns: described.info.nextActionTimes.slice(0, 3).map((d) => d.toISOString()),
      recentRuns: described.info.recentActions.map((a) => a.action.workflow.workflowId),
      paused: described.state.paused,
    });
  }
  return summaries;
}
