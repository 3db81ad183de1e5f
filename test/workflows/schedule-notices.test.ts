// Notice of scheduled rotations: on the time-skipping server, each notice goes out exactly its period before the
// rotation it announces (by the server's clock), one per rotation, and the workflow ends when the schedule goes;
// on the dev server, a real schedule's notice reaches a webhook signed so that independent code verifies it.
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { Context } from '@temporalio/activity';
import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createActivities } from '../../src/activities';
import type { RotationNotice } from '../../src/activities/schedules';
import {
  createRotationSchedule,
  deleteRotationSchedule,
  listRotationSchedules,
  noticeWorkflowId,
} from '../../src/client/schedules';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { RekeyMetrics } from '../../src/observability/metrics';
import { TargetRuntimes } from '../../src/targets/runtime';
import { noticeRetryDelayMs, noticeStateQuery, scheduleNotices, type NoticeState } from '../../src/workflows';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { createDevServerEnv, queryUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';
import { keyspaceOf } from '../../src/rotation/identity';
import { keyspaceIn } from '../helpers/keyspace';

const DAY = 86_400_000;

describe('notice of scheduled rotations, on the time-skipping server', () => {
  const server = useTimeSkippingEnv();

  it('each notice goes out 7 days before its rotation, once per rotation; the workflow ends with its schedule', async () => {
    const { env } = server;
    const taskQueue = `notices-${randomUUID()}`;
    const start = await env.currentTimeMs();
    // The schedule as the stub reports it: rotations at +10 days and +100 days, then it is deleted.
    const runs = [start + 10 * DAY, start + 100 * DAY];
    const sent: { notice: RotationNotice; at: number }[] = [];
    const serverNow = () => Context.current().info.scheduledTimestampMs;
    const activities = {
      nextScheduledRotation: () => {
        const now = serverNow();
        if (now > runs[1]! + DAY) return Promise.resolve({ exists: false, paused: false });
        const next = runs.find((run) => run > now);
        return Promise.resolve({
          exists: true,
          paused: false,
          ...(next !== undefined && { nextRun: new Date(next).toISOString() }),
        });
      },
      sendRotationNotice: (notice: RotationNotice) => {
        sent.push({ notice, at: serverNow() });
        return Promise.resolve({});
      },
    };
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities,
    });
    const state = await worker.runUntil(async () => {
      const handle = await env.client.workflow.start(scheduleNotices, {
        taskQueue,
        workflowId: `notices-${randomUUID()}`,
        args: [{ scheduleId: 'quarterly', target: 'talos', notifyBefore: '7d', maxHistoryEvents: 120 }],
      });
      return resultWithin<NoticeState>(handle, 90_000);
    });
    expect(sent.map((s) => s.notice.rotationAt)).toEqual(runs.map((run) => new Date(run).toISOString()));
    for (const [i, { notice, at }] of sent.entries()) {
      // Not before its time, and within the minute after it (the server's clock, which time skipping moves).
      expect(at).toBeGreaterThanOrEqual(runs[i]! - 7 * DAY);
      expect(at).toBeLessThan(runs[i]! - 7 * DAY + 60_000);
      expect(notice).toEqual({
        scheduleId: 'quarterly',
        target: 'talos',
        rotationAt: new Date(runs[i]!).toISOString(),
        noticeAt: new Date(runs[i]! - 7 * DAY).toISOString(),
      });
    }
    expect(state).toMatchObject({ ended: 'the schedule was deleted', noticedFor: new Date(runs[1]!).toISOString() });
  });
});

describe('issue 24, finding 10: a notice outlives any outage of its receiver, and its failures are seen', () => {
  const server = useTimeSkippingEnv();
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('a receiver that refuses for hours, past the 30 attempts that used to end the notices, gets the notice once it answers; every refusal is counted and the workflow never fails', async () => {
    const { env } = server;
    const taskQueue = `notices-${randomUUID()}`;
    const workflowId = `notices-${randomUUID()}`;
    const start = await env.currentTimeMs();
    const rotationAt = start + 10 * DAY;
    // The schedule as the stub reports it (the time-skipping server has no schedules): one rotation at +10 days,
    // then it is deleted. The notice itself goes through the real activity to a real receiver.
    const serverNow = () => Context.current().info.scheduledTimestampMs;
    const nextScheduledRotation = () => {
      const now = serverNow();
      if (now > rotationAt + DAY) return Promise.resolve({ exists: false, paused: false });
      return Promise.resolve({
        exists: true,
        paused: false,
        ...(now < rotationAt && { nextRun: new Date(rotationAt).toISOString() }),
      });
    };
    // Refuses the first 31 requests (the old retry policy made 30 attempts), then takes the notice. At the 8th it
    // asks the workflow what it knows, mid-outage.
    const REFUSALS = 31;
    const requests: string[] = [];
    let handle: WorkflowHandleWithFirstExecutionRunId<typeof scheduleNotices> | undefined;
    let midOutage: NoticeState | undefined;
    const receiver = http.createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        void (async () => {
          requests.push(body);
          if (requests.length === 8) midOutage = await handle!.query(noticeStateQuery);
          response.writeHead(requests.length <= REFUSALS ? 503 : 204).end();
        })();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const metrics = new RekeyMetrics();
    try {
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: {
          ...createActivities({
            db: db.pool,
            keys: testKeys(['v1']),
            metrics,
            env: { REKEY_NOTIFY_SECRET: randomBytes(24).toString('base64url') },
          }),
          nextScheduledRotation,
        },
      });
      const state = await worker.runUntil(async () => {
        handle = await env.client.workflow.start(scheduleNotices, {
          taskQueue,
          workflowId,
          args: [
            {
              scheduleId: 'quarterly',
              target: 'talos',
              notifyBefore: '7d',
              webhookUrl: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/rekey`,
              // Small, so that the outage spans several runs (continue-as-new carries the attempts).
              maxHistoryEvents: 100,
            },
          ],
        });
        // Completes (the schedule is deleted after its rotation): a failed run would reject here.
        return resultWithin<NoticeState>(handle, 100_000);
      });

      // The notice went out, once the receiver answered.
      expect(requests).toHaveLength(REFUSALS + 1);
      expect(JSON.parse(requests.at(-1)!)).toMatchObject({
        scheduleId: 'quarterly',
        rotationAt: new Date(rotationAt).toISOString(),
      });
      expect(state).toMatchObject({
        ended: 'the schedule was deleted',
        noticedFor: new Date(rotationAt).toISOString(),
        lastNoticeAttempts: REFUSALS + 1,
      });
      expect(state.failing).toBeUndefined();
      expect(state.missedNotice).toBeUndefined();
      // Mid-outage, the query said how often, since when and why, and when it would try again.
      expect(midOutage?.failing).toMatchObject({
        rotationAt: new Date(rotationAt).toISOString(),
        attempts: 7,
        lastError: 'the notice webhook answered 503',
      });
      const failing = midOutage!.failing!;
      expect(Date.parse(failing.nextAttemptAt) - Date.parse(failing.lastAttemptAt)).toBe(noticeRetryDelayMs(7));
      expect(noticeRetryDelayMs(7)).toBe(600_000);
      // The outage lasted hours of the server's time, far past the old retries' 25 minutes.
      expect(Date.parse(state.lastNoticeAt!) - Date.parse(failing.since)).toBeGreaterThan(4 * 3_600_000);
      // Every refusal counted once, by the worker that made the attempt.
      expect(await metrics.registry.getSingleMetricAsString('rekey_notice_failures_total')).toContain(
        `rekey_notice_failures_total{schedule_id="quarterly",target="talos"} ${REFUSALS}`,
      );
      // The outage spanned more than one run of the workflow: the first continued as new, the last completed.
      const first = await env.client.workflow.getHandle(workflowId, handle!.firstExecutionRunId).describe();
      expect(first.status.name).toBe('CONTINUED_AS_NEW');
    } finally {
      await new Promise((resolve) => receiver.close(resolve));
    }
  });
});

describe('notice of a real schedule, on the dev server, to a signed webhook', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let receiver: http.Server;
  const received: { headers: http.IncomingHttpHeaders; body: string; at: number }[] = [];
  const secret = randomBytes(24).toString('base64url');
  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    receiver = http.createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        received.push({ headers: request.headers, body, at: Date.now() });
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    await new Promise((resolve) => receiver?.close(resolve));
    await db?.drop();
    await env?.teardown();
  });

  it('a schedule created inside its notice period announces its next rotation at once; schedule list and the metrics show it', async () => {
    const taskQueue = `notices-${randomUUID()}`;
    const scheduleId = `notice-${randomUUID()}`;
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/rekey`;
    // A key source that generates KEKs: schedule create refuses one that cannot (each run rotates to a new KEK).
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-notices-'));
    const keyring = FileKeyring.open(path.join(scratch, 'keyring.json'), { create: true });
    onTestFinished(() => {
      keyring.close();
      fs.rmSync(scratch, { recursive: true, force: true });
    });
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({
        db: db.pool,
        keys: keyring,
        temporal: env.client,
        env: { REKEY_NOTIFY_SECRET: secret },
      }),
    });
    await worker.runUntil(async () => {
      const signedFrom = Math.floor(Date.now() / 1000);
      // Every 30 days, notice 30 days before: the next rotation is inside its notice period already.
      await createRotationSchedule(env.client, {
        scheduleId,
        every: '30d',
        taskQueue,
        notifyBefore: '30d',
        notifyUrl: url,
        target: 'rekey',
        keyspace: await keyspaceIn(db.pool),
      });
      const nextRun = (await env.client.schedule.getHandle(scheduleId).describe()).info.nextActionTimes[0]!;
      const handle = env.client.workflow.getHandle<typeof scheduleNotices>(noticeWorkflowId(scheduleId));
      await eventually('the receiver getting the notice', () => received.length > 0, { every: 100 });
      expect(received).toHaveLength(1);
      const [{ headers, body, at: receivedAt }] = received as [(typeof received)[0]];
      // Verified as a receiver would, with its own HMAC: over "<timestamp>.<body>", under the shared secret.
      const expected = createHmac('sha256', secret)
        .update(`${String(headers['x-rekey-timestamp'])}.${body}`)
        .digest('hex');
      expect(headers['x-rekey-signature']).toBe(`v1=${expected}`);
      // Signed with the time it was sent, in seconds: after the schedule was made, before the receiver had it.
      const signedAt = Number(headers['x-rekey-timestamp']);
      expect(signedAt).toBeGreaterThanOrEqual(signedFrom);
      expect(signedAt).toBeLessThanOrEqual(Math.ceil(receivedAt / 1000));
      expect(JSON.parse(body)).toEqual({
        event: 'rekey.rotation.upcoming',
        scheduleId,
        target: 'rekey',
        rotationAt: nextRun.toISOString(),
        noticeAt: new Date(nextRun.getTime() - 30 * DAY).toISOString(),
      });
      expect(body).not.toContain(secret);

      // The webhook has the notice once the activity sent it; the workflow records it when the activity's completion
      // reaches it, a moment later (longer on a busy machine).
      const state = await queryUntil<NoticeState>(handle, noticeStateQuery.name, (s) => s.noticedFor !== undefined, {
        withinMs: 30_000,
      });
      expect(state.noticedFor).toBe(nextRun.toISOString());
      const listed = (await listRotationSchedules(env.client)).find((s) => s.scheduleId === scheduleId)!;
      expect(listed.noticedFor).toBe(nextRun.toISOString());
      expect(listed.nextRuns[0]).toBe(nextRun.toISOString());
      expect(listed.nextNotice).toBeUndefined(); // it went out
      const metrics = new RekeyMetrics();
      const targets = new TargetRuntimes({ db: db.pool, keys: testKeys(['v1']) });
      metrics.watch(targets, env.client);
      const scraped = await metrics.registry.metrics().finally(() => targets.close());
      expect(scraped).toContain(
        `rekey_rotation_upcoming{schedule_id="${scheduleId}",target="rekey",rotation_at="${nextRun.toISOString()}"} 1`,
      );

      // Deleting the schedule ends its notices.
      await deleteRotationSchedule(env.client, scheduleId);
      expect((await handle.describe()).status.name).toBe('TERMINATED');
    });
  });

  it('refuses notice options that cannot work, before anything is created', async () => {
    const attempt = (options: { notifyBefore?: string; notifyUrl?: string }) =>
      createRotationSchedule(env.client, {
        scheduleId: `bad-${randomUUID()}`,
        taskQueue: 'x',
        keyspace: keyspaceOf('00000000-0000-4000-8000-000000000000', 'rekey.tenant_deks'),
        ...options,
      }).catch((err: Error) => err.message);
    expect(await attempt({ notifyUrl: 'https://hooks.example.com/x' })).toBe(
      '--notify-url needs --notify-before (how long before each rotation to notify)',
    );
    expect(await attempt({ notifyBefore: 'soon' })).toBe("--notify-before 'soon' is not a duration such as 7d");
    expect(await attempt({ notifyBefore: '7d', notifyUrl: 'ftp://x' })).toBe(
      "--notify-url 'ftp://x' is not an http(s) URL",
    );
  });
});
