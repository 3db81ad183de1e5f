// Waiting on a rotation schedule's runs, as the tests of `rekey schedule` do.
import type { Client } from '@temporalio/client';
import type { ScheduledRotationResult, scheduledRotation } from '../../src/workflows';
import { eventually } from './eventually';
import { resultWithin } from './temporal';

/**
 * `rekey schedule create` options for a schedule whose every run rotates at once: the schedule itself runs only when
 * triggered (every 90 days), the grace lasts a second, and the active KEK is never too young.
 */
export const ROTATES_WHEN_TRIGGERED = ['--every', '90d', '--grace', '1s', '--min-kek-age', '0s'];

/**
 * The result of a schedule's `nth` run (1-based, the first by default), once its launcher has ended: which rotation it
 * started, or why none. Fails with what it waited for if the schedule never runs that often.
 */
export async function scheduledRun(client: Client, scheduleId: string, nth = 1): Promise<ScheduledRotationResult> {
  const schedule = client.schedule.getHandle(scheduleId);
  const launcher = await eventually(
    `schedule ${scheduleId} running ${nth} time(s)`,
    async () => (await schedule.describe()).info.recentActions[nth - 1]?.action.workflow.workflowId,
    { every: 100 },
  );
  return resultWithin<ScheduledRotationResult>(client.workflow.getHandle<typeof scheduledRotation>(launcher));
}
