// The activities of rotation notices (workflows/schedule-notices.ts): when a schedule runs next, and the notice
// itself: a log event, and a JSON body POSTed to the webhook, signed with HMAC-SHA256 under REKEY_NOTIFY_SECRET.
import { createHmac } from 'node:crypto';
import { log } from '@temporalio/activity';
import { ScheduleNotFoundError } from '@temporalio/client';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { parseRotationRequest, type RotationRequest } from '../rotation/rotation-input';
import { ConfigError, InvalidRotationError } from '../errors';

export interface RotationNotice {
  scheduleId: string;
  target: string;
  rotationAt: string;
  noticeAt: string;
  webhookUrl?: string;
}

/** The webhook's headers: `X-Rekey-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`, and the timestamp. */
export function signNotice(secret: string, body: string, timestamp: number): Record<string, string> {
  const signature = createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
  return { 'x-rekey-timestamp': String(timestamp), 'x-rekey-signature': `v1=${signature}` };
}

export function createScheduleActivities(deps: ActivityDependencies) {
  const temporal = () => {
    if (!deps.temporal) throw new ConfigError('this worker has no Temporal client for schedule notices');
    return deps.temporal;
  };
  const targets = targetRuntimes(deps);
  return {
    /**
     * Whether a schedule of this request can ever do its work, asked by `rekey schedule create` before it creates
     * one: the target opens (its table as its definition says) in the keyspace the schedule records, and its key
     * source can generate the new KEK each run rotates to. Says where the keys are.
     */
    async checkScheduledRotation(request: RotationRequest): Promise<{ keySource: string }> {
      const settings = parseRotationRequest(request);
      // The keyspace the schedule records: a worker of another database refuses it, as it would refuse each run.
      const { keyring, definition } = await targets.forRequest({
        target: settings.target,
        keyspace: request.keyspace,
      });
      await keyring.reload();
      if (settings.to === 'new' && !keyring.makesKeks) {
        throw new InvalidRotationError(
          `target '${definition.name}' takes its KEKs from ${keyring.description}, where rekey cannot generate one, and every scheduled run rotates to a newly generated KEK: rotate it by hand (add the new KEK everywhere, then rekey rotate --target ${definition.name} --from current --to <id>), or give it a key source rekey generates in (a keyring file, AWS Secrets Manager, AWS KMS)`,
        );
      }
      return { keySource: keyring.description };
    },

    /** When the schedule runs next; whether it still exists, and is paused. */
    async nextScheduledRotation({ scheduleId }: { scheduleId: string }) {
      try {
        const described = await temporal().schedule.getHandle(scheduleId).describe();
        const next = described.info.nextActionTimes[0];
        return { exists: true, paused: described.state.paused, ...(next && { nextRun: next.toISOString() }) };
      } catch (err) {
        if (err instanceof ScheduleNotFoundError) return { exists: false, paused: false };
        throw err;
      }
    },

    /**
     * Announces an upcoming rotation: a log event always; the signed webhook when the schedule names one. Each failure
     * to deliver it is counted (rekey_notice_failures_total).
     */
    async sendRotationNotice(notice: RotationNotice): Promise<{ webhookStatus?: number }> {
      const { webhookUrl, ...announced } = notice;
      log.info('rotation upcoming', { event: 'rekey.rotation.upcoming', ...announced });
      if (webhookUrl === undefined) return {};
      try {
        return await postNotice(webhookUrl, announced);
      } catch (err) {
        deps.metrics?.noticeFailures.inc({ schedule_id: notice.scheduleId, target: notice.target });
        throw err;
      }
    },
  };

  /** POSTs the notice, signed; throws when the receiver does not take it. */
  async function postNotice(
    webhookUrl: string,
    announced: Omit<RotationNotice, 'webhookUrl'>,
  ): Promise<{ webhookStatus: number }> {
    const secret = (deps.env ?? process.env).REKEY_NOTIFY_SECRET;
    if (!secret || secret.length < 16) {
      throw new ConfigError(
        'REKEY_NOTIFY_SECRET must be set on the worker (16+ characters) to sign the rotation notice webhook',
      );
    }
    const body = JSON.stringify({ event: 'rekey.rotation.upcoming', ...announced });
    const headers = signNotice(secret, body, Math.floor(Date.now() / 1000));
    let response: Response;
    try {
      response = await fetch(webhookUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body,
        signal: AbortSignal.timeout(10_000),
      });
    } catch (err) {
      throw new Error(`the notice webhook did not answer: ${fetchFailure(err)}`);
    }
    // A refused notice is tried again by the notice workflow for as long as it is refused, not given up on.
    if (!response.ok) throw new Error(`the notice webhook answered ${response.status}`);
    return { webhookStatus: response.status };
  }
}

/** Why fetch failed, in a few words (its own message is only "fetch failed"); never the URL, which may hold a token. */
function fetchFailure(err: unknown): string {
  const cause = err instanceof Error ? (err.cause as { code?: unknown; message?: unknown } | undefined) : undefined;
  if (typeof cause?.code === 'string') return cause.code;
  if (err instanceof Error && err.name === 'TimeoutError') return 'no answer within 10 seconds';
  return typeof cause?.message === 'string' ? cause.message : err instanceof Error ? err.message : String(err);
}
