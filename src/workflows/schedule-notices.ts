// Notice of an upcoming scheduled rotation (`rekey schedule create … --notify-before 7d`), as the secrets guide's
// planned rotation policies give it (`notify_days_before`). One long-lived workflow per schedule: it reads when the
// schedule runs next, sleeps until that time less the notice period, and announces it (a log event, the
// rekey_rotation_upcoming gauge, and an optional signed webhook). It ends when the schedule is deleted.
import { ApplicationFailure, continueAsNew, defineQuery, setHandler, sleep, workflowInfo } from '@temporalio/workflow';
import { formatDuration, parseDuration } from '../rotation/durations';
import { steps } from './activity-proxies';

export interface NoticeRequest {
  scheduleId: string;
  target: string;
  /** How long before each scheduled rotation the notice goes out, e.g. '7d'. */
  notifyBefore: string;
  /** Where the signed JSON notice is POSTed (the worker signs it with REKEY_NOTIFY_SECRET). */
  webhookUrl?: string;
  /** Continue-as-new after this many history events (tests). */
  maxHistoryEvents?: number;
}

export interface NoticeState {
  scheduleId: string;
  target: string;
  notifyBefore: string;
  /** The schedule's next rotation and when its notice goes out (ISO 8601), while there is one. */
  nextRotation?: string;
  nextNotice?: string;
  /** The rotation the last notice announced, and when it went out. */
  noticedFor?: string;
  lastNoticeAt?: string;
  ended?: string;
}

export const noticeStateQuery = defineQuery<NoticeState>('progress');

/** Check again this often while waiting: the schedule may have been changed, paused or deleted meanwhile. */
const RECHECK_MS = 6 * 3_600_000;

export async function scheduleNotices(request: NoticeRequest, carried?: NoticeState): Promise<NoticeState> {
  const notifyMs = parseDuration(request.notifyBefore);
  if (notifyMs === undefined || notifyMs <= 0) {
    // Fails the run with the reason (a plain Error would fail the workflow task and retry it forever).
    throw ApplicationFailure.nonRetryable(
      `notifyBefore '${request.notifyBefore}' is not a duration such as 7d`,
      'InvalidRotationError',
    );
  }
  const state: NoticeState = carried ?? {
    scheduleId: request.scheduleId,
    target: request.target,
    notifyBefore: request.notifyBefore,
  };
  setHandler(noticeStateQuery, () => state);
  const maxHistoryEvents = request.maxHistoryEvents ?? 2_000;
  for (;;) {
    if (workflowInfo().continueAsNewSuggested || workflowInfo().historyLength >= maxHistoryEvents) {
      return continueAsNew<typeof scheduleNotices>(request, state);
    }
    const schedule = await steps.nextScheduledRotation({ scheduleId: request.scheduleId });
    if (!schedule.exists) {
      state.ended = 'the schedule was deleted';
      delete state.nextRotation;
      delete state.nextNotice;
      return state;
    }
    if (schedule.nextRun === undefined || schedule.paused) {
      delete state.nextRotation;
      delete state.nextNotice;
      await sleep(RECHECK_MS, { summary: 'schedule paused or without a next run; check again' });
      continue;
    }
    const runAt = Date.parse(schedule.nextRun);
    const noticeAt = runAt - notifyMs;
    state.nextRotation = schedule.nextRun;
    state.nextNotice = new Date(noticeAt).toISOString();
    const now = Date.now();
    if (state.noticedFor === schedule.nextRun) {
      // Announced: wait until that rotation has started, then look for the next one.
      // At least a minute: a scheduler that still reports a time already past must not make this a busy loop.
      await sleep(Math.max(60_000, Math.min(runAt - now + 60_000, RECHECK_MS)), {
        summary: `rotation at ${schedule.nextRun} announced`,
      });
      continue;
    }
    if (now < noticeAt) {
      await sleep(Math.min(noticeAt - now, RECHECK_MS), {
        summary: `notice at ${state.nextNotice}, ${formatDuration(notifyMs)} before the rotation`,
      });
      continue;
    }
    // Inside the notice period (a schedule created later than that gives notice at once).
    await steps.sendRotationNotice({
      scheduleId: request.scheduleId,
      target: request.target,
      rotationAt: schedule.nextRun,
      noticeAt: state.nextNotice,
      ...(request.webhookUrl !== undefined && { webhookUrl: request.webhookUrl }),
    });
    state.noticedFor = schedule.nextRun;
    state.lastNoticeAt = new Date(Date.now()).toISOString();
  }
}
