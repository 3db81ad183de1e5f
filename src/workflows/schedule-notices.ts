// Notice of an upcoming scheduled rotation (`rekey schedule create … --notify-before 7d`), as the secrets guide's
// planned rotation policies give it (`notify_days_before`). One long-lived workflow per schedule: it reads when the
// schedule runs next, sleeps until that time less the notice period, and announces it (a log event, the
// rekey_rotation_upcoming gauge, and an optional signed webhook). It ends when the schedule is deleted.
//
// A receiver that refuses the notice is tried again for as long as it refuses (every 10 seconds at first, doubling
// to every 10 minutes), and the workflow never fails for it: the query shows the attempts and the last error, the
// worker counts each failure (rekey_notice_failures_total), and an alert fires on a notice failing for 15 minutes.
import {
  ActivityFailure,
  ApplicationFailure,
  continueAsNew,
  patched,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import type { RotationNotice } from '../activities/schedules';
import { formatDuration, parseDuration } from '../rotation/durations';
import { noticeAttempts, steps } from './activity-proxies';
import { noticeStateQuery, type NoticeState } from './messages';

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

/** Check again this often while waiting: the schedule may have been changed, paused or deleted meanwhile. */
const RECHECK_MS = 6 * 3_600_000;

/** Notices are tried again without end, every 10 seconds at first, doubling up to every 10 minutes. */
export const NOTICE_PATCH = 'rekey-notice-retry-1';
const NOTICE_RETRY_FIRST_MS = 10_000;
const NOTICE_RETRY_MAX_MS = 600_000;

/** The wait after the n-th refused attempt in a row (n >= 1). */
export function noticeRetryDelayMs(attempts: number): number {
  return Math.min(NOTICE_RETRY_MAX_MS, NOTICE_RETRY_FIRST_MS * 2 ** Math.min(attempts - 1, 16));
}

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
    if (state.failing && (schedule.paused || schedule.nextRun !== state.failing.rotationAt)) {
      // The refused notice is no longer due: the schedule moved on to another rotation, or was paused.
      if (!schedule.paused) state.missedNotice = state.failing.rotationAt;
      delete state.failing;
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
    const notice: RotationNotice = {
      scheduleId: request.scheduleId,
      target: request.target,
      rotationAt: schedule.nextRun,
      noticeAt: state.nextNotice,
      ...(request.webhookUrl !== undefined && { webhookUrl: request.webhookUrl }),
    };
    if (patched(NOTICE_PATCH)) {
      // Refused: wait, then start over from the schedule (it may have moved on, or gone; history stays bounded).
      if (!(await attemptNotice(notice, state))) continue;
    } else {
      await steps.sendRotationNotice(notice);
    }
    state.noticedFor = schedule.nextRun;
    state.lastNoticeAt = new Date(Date.now()).toISOString();
  }
}

/**
 * One attempt at the notice: true once it went out; false, with the failure recorded in the state and after the
 * wait before the next attempt, when it did not.
 */
async function attemptNotice(notice: RotationNotice, state: NoticeState): Promise<boolean> {
  const earlier = state.failing?.rotationAt === notice.rotationAt ? state.failing : undefined;
  try {
    await noticeAttempts.sendRotationNotice(notice);
    state.lastNoticeAttempts = (earlier?.attempts ?? 0) + 1;
    delete state.failing;
    return true;
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err;
    const now = Date.now();
    const attempts = (earlier?.attempts ?? 0) + 1;
    const waitMs = noticeRetryDelayMs(attempts);
    state.failing = {
      rotationAt: notice.rotationAt,
      since: earlier?.since ?? new Date(now).toISOString(),
      lastAttemptAt: new Date(now).toISOString(),
      attempts,
      lastError: (err.cause ?? err).message,
      nextAttemptAt: new Date(now + waitMs).toISOString(),
    };
    await sleep(waitMs, { summary: `notice refused ${attempts} time(s); try again` });
    return false;
  }
}
