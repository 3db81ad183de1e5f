// The rotation workflow's own decisions, with stub activities on the time-skipping server: fast, and independent of
// PostgreSQL. Each test named after a finding of the issue "Safety" failed on the code before its fix.
import { randomUUID } from 'node:crypto';
import { ApplicationFailure, type Client, WorkflowFailedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { startRotation } from '../../src/client/rotations';
import { keyspaceOf, rotationWorkflowId } from '../../src/rotation/identity';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { errorAnswer, LegacyValuesRemainError, NoVerdictError, RunFailedError } from '../../src/errors';
import { Pool } from 'pg';
import { buildAdminServer } from '../../src/admin/server';
import { TargetRuntimes } from '../../src/targets/runtime';
import { testKeys } from '../helpers/keys';
import { describe, expect, it } from 'vitest';
import {
  abortSignal,
  abortUpdate,
  confirmStepUpdate,
  overrideFleetGateUpdate,
  pauseUpdate,
  resumeUpdate,
  setGraceUpdate,
  validatedUpdate,
} from '../../src/workflows';
import type { RotationReport } from '../../src/workflows';
import { progressUntil, StubRotation } from '../helpers/stub-rotation';
import { resultWithin, skipTime, useTimeSkippingEnv } from '../helpers/temporal';

const ADMIN_TOKEN = 'logic-test-token-0123456789';

/** The admin API over this server's client; its database is never opened by the routes these tests call. */
async function adminApi(client: Client) {
  const db = new Pool({ connectionString: 'postgres://unused.invalid/unused' });
  const api = await buildAdminServer({
    client,
    targets: new TargetRuntimes({ db, keys: testKeys(['v1']) }),
    defaultTarget: 'rekey',
    taskQueue: 'unused',
    token: ADMIN_TOKEN,
    configuredCurrentKekId: () => undefined,
  });
  return { api, close: async () => (await api.close(), await db.end()) };
}

/** The reason an update was refused (its validator's message). */
async function refusal(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
  const { cause } = err as WorkflowUpdateFailedError;
  const type = cause instanceof ApplicationFailure ? cause.type : cause?.name;
  return `${type}: ${cause?.message}`;
}

describe('rotation workflow logic, with stub activities on the time-skipping server', () => {
  const server = useTimeSkippingEnv();

  it("validate's refusal is the start's answer, with its error's kind, and the run fails with it only once that answer is given", async () => {
    const stub = new StubRotation();
    stub.validateRefusal = new LegacyValuesRemainError('target still holds 3 legacy value(s)');
    // A keyspace of its own (a database identity no other test has): the stub activities open no database.
    const keyspace = keyspaceOf(randomUUID(), 'rekey.tenant_deks');
    const workflowId = rotationWorkflowId(BUILTIN_TARGET, keyspace);
    // The worker runs until the run has ended: after its refusal it records its end in the run history.
    const [refused, failed] = await stub.run(server.env, async () => {
      const answer: unknown = await startRotation(
        server.env.client,
        { from: 'v1', to: 'v2' },
        { taskQueue: stub.taskQueue, keyspace },
      ).catch((err: unknown) => err);
      const ended: unknown = await resultWithin(server.env.client.workflow.getHandle(workflowId)).then(
        () => undefined,
        (err: unknown) => err,
      );
      return [answer, ended] as const;
    });
    expect(refused).toBeInstanceOf(RunFailedError);
    expect(refused).toMatchObject({ kind: 'refused', message: 'target still holds 3 legacy value(s)' });
    expect(failed).toBeInstanceOf(WorkflowFailedError);
    expect((failed as WorkflowFailedError).cause).toMatchObject({ type: 'LegacyValuesRemainError' });
    // Nothing but validate ran, and then the record of the run's end.
    expect(stub.calls).toEqual(['validateRotation', 'recordRun']);
  });

  it('a validate step that does not decide in time: the start says the run stays started and what validate is doing; asked later, the validated update answers', async () => {
    const stub = new StubRotation();
    const validating = stub.hold('validateRotation');
    const keyspace = keyspaceOf(randomUUID(), 'rekey.tenant_deks');
    const workflowId = rotationWorkflowId(BUILTIN_TARGET, keyspace);
    await stub.run(server.env, async () => {
      // Ten seconds: time enough for a fresh worker to take up the run and reach validate on a busy machine.
      const asked = startRotation(
        server.env.client,
        { from: 'current', to: 'v2', gracePeriod: '1h' },
        { taskQueue: stub.taskQueue, keyspace, answerWithinMs: 10_000 },
      ).catch((err: unknown) => err);
      await validating.entered();
      const unanswered = await asked;
      expect(unanswered).toBeInstanceOf(NoVerdictError);
      expect(errorAnswer(unanswered)).toMatchObject({ error: 'no_verdict', kind: 'failed', exit: 1, http: 500 });
      expect((unanswered as NoVerdictError).message).toMatch(
        new RegExp(
          `^${workflowId.replaceAll('.', '\\.')}@\\S+ started, but gave no verdict within 10s: validateRotation is (running|at attempt 1); it stays started`,
        ),
      );
      validating.release();
      const handle = server.env.client.workflow.getHandle(workflowId);
      const answer = await handle.executeUpdate(validatedUpdate);
      expect(answer).toMatchObject({ from: 'v1', to: 'v2', promoted: false, outcome: 'running' });
      await handle.terminate('test over');
    });
  });

  it('Finding 5: a pause during the fleet wait holds the promotion until resumed, and status says what is held', async () => {
    const stub = new StubRotation();
    stub.fleet = { unwrap: false, wrap: false };
    const result = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env);
      await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      await handle.executeUpdate(pauseUpdate);
      stub.fleet = { unwrap: true, wrap: true };
      // Fleet polls go on for ten minutes of workflow time: the fleet is ready, and still nothing is promoted.
      const held = await progressUntil(handle, (p) => p.heldBefore === 'promote', { env: server.env, skip: '1m' });
      await skipTime(server.env, '10m');
      expect(held).toMatchObject({ phase: 'promote', paused: true });
      expect(stub.count('promoteKek')).toBe(0);
      await handle.executeUpdate(resumeUpdate);
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('completed');
    expect(stub.count('promoteKek')).toBe(1);
    expect(stub.count('retireKek')).toBe(1);
  });

  it('Finding 5: a pause during grace lets the clock run out but retires nothing until resumed', async () => {
    const stub = new StubRotation();
    const result = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { gracePeriod: '1d' });
      await progressUntil(handle, (p) => p.phase === 'grace');
      await handle.executeUpdate(pauseUpdate);
      const held = await progressUntil(handle, (p) => p.heldBefore === 'retire', { env: server.env, skip: '6h' });
      await skipTime(server.env, '3d');
      expect(held).toMatchObject({ phase: 'retire', paused: true });
      expect(stub.count('retireKek')).toBe(0);
      await handle.executeUpdate(resumeUpdate);
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('completed');
    expect(stub.count('retireKek')).toBe(1);
  });

  it('Finding 6: abort and pause are refused, with the reason, while promotion is in flight and once retire began', async () => {
    const stub = new StubRotation();
    const promoting = stub.hold('promoteKek');
    const result = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { gracePeriod: '7d' });
      await promoting.entered();
      expect(await refusal(handle.executeUpdate(abortUpdate, { args: ['stop'] }))).toMatch(
        /^ControlRefusedError: 'v2' is being promoted right now/,
      );
      promoting.release();
      await progressUntil(handle, (p) => p.phase === 'grace');
      const retiring = stub.hold('retireKek');
      await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
      await retiring.entered();
      expect(await refusal(handle.executeUpdate(abortUpdate, { args: ['too late'] }))).toMatch(
        /^ControlRefusedError: 'v1' is being retired: the rotation completes/,
      );
      expect(await refusal(handle.executeUpdate(pauseUpdate))).toMatch(/^ControlRefusedError: 'v1' is being retired/);
      // The admin API says the same, as a conflict with the reason.
      const { api, close } = await adminApi(server.env.client);
      try {
        const opId = `${handle.workflowId}@${handle.firstExecutionRunId}`;
        const answer = await api.inject({
          method: 'POST',
          url: `/admin/v1/secrets/rotation/${encodeURIComponent(opId)}/abort`,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        });
        expect(answer.statusCode).toBe(409);
        expect(answer.json()).toMatchObject({
          error: 'conflict',
          message: expect.stringMatching(/^'v1' is being retired: the rotation completes/) as unknown,
        });
      } finally {
        await close();
      }
      // A signal cannot be refused: the progress says it was ignored, and why.
      await handle.signal(abortSignal, 'by signal');
      await progressUntil(handle, (p) => p.note?.startsWith('abort signal ignored') === true);
      retiring.release();
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('completed');
  });

  it('Finding 8: a canary waits for every live instance to hold the new KEK before its row goes under it', async () => {
    const stub = new StubRotation();
    stub.fleet = { unwrap: false, wrap: false };
    const result = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { tenantId: 'tenant-1' });
      await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      await skipTime(server.env, '2m');
      expect(stub.count('rewrapSlice')).toBe(0);
      stub.fleet = { unwrap: true, wrap: false };
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('canary');
    expect(stub.count('rewrapSlice')).toBe(1);
    expect(stub.count('promoteKek')).toBe(0);
  });

  it('Finding 11: an override lets one fleet gate go, not the later one; an override with nothing waiting is refused', async () => {
    const stub = new StubRotation();
    stub.fleet = { unwrap: false, wrap: false };
    const result = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { gracePeriod: '7d' });
      await progressUntil(handle, (p) => p.waiting?.step === 'promote');
      await handle.executeUpdate(overrideFleetGateUpdate, { args: ['old pods drain tonight'] });
      // The gate before the last passes waits again: the override was for promotion.
      stub.fleet = { unwrap: true, wrap: false };
      await progressUntil(handle, (p) => p.waiting?.step === 'last-passes');
      expect(stub.count('promoteKek')).toBe(1);
      await handle.executeUpdate(overrideFleetGateUpdate, { args: ['app-1 wraps with v2 after its restart'] });
      await progressUntil(handle, (p) => p.phase === 'grace');
      expect(await refusal(handle.executeUpdate(overrideFleetGateUpdate, { args: ['why not'] }))).toMatch(
        /^ControlRefusedError: nothing waits for the fleet now/,
      );
      await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
      return resultWithin<RotationReport>(handle);
    });
    expect(result.outcome).toBe('completed');
  });

  it('Finding (issue 25): a confirmation of a step the run does not wait for is refused, naming what it waits for: confirm --step promote while the run waits on retire', async () => {
    const stub = new StubRotation();
    stub.owner = 'application';
    stub.evidence = { promote: true, retire: false };
    const result = await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { gracePeriod: '1h' });
      await progressUntil(handle, (p) => p.phase === 'grace', { env: server.env, skip: '1m' });
      expect(
        await refusal(handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: 'early' }] })),
      ).toBe(
        'ControlRefusedError: the rotation waits for no confirmation now (grace): confirm --step retire once status shows it waiting for the application to retire',
      );
      await progressUntil(handle, (p) => p.waiting?.step === 'retire', { env: server.env, skip: '10m' });
      expect(
        await refusal(handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'promote', note: 'v2 is current' }] })),
      ).toBe(
        'ControlRefusedError: the rotation waits for the application to retire (remove KEK v1 and restart), not to promote: confirm --step retire once that is done',
      );
      await handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: 'v1 removed everywhere' }] });
      return resultWithin<RotationReport>(handle);
    });
    expect(result).toMatchObject({ outcome: 'completed' });
    expect(result.note).not.toContain('v2 is current');
  });

  it('Finding 11: a grace change before grace answers the new period, which starts once verify passes', async () => {
    const stub = new StubRotation();
    stub.fleet = { unwrap: false, wrap: false };
    await stub.run(server.env, async () => {
      const handle = await stub.start(server.env, { gracePeriod: '7d' });
      await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      const answer = await handle.executeUpdate(setGraceUpdate, { args: [{ extendBy: '2d' }] });
      expect(answer).toEqual({ gracePeriod: '9d 0h', startsWhenVerified: true });
      expect(await refusal(handle.executeUpdate(setGraceUpdate, { args: [{ extendBy: 'a while' }] }))).toMatch(
        /^InvalidRotationError: extendBy 'a while' is not a duration/,
      );
      await handle.executeUpdate(abortUpdate, { args: ['test over'] });
      expect((await resultWithin<RotationReport>(handle)).outcome).toBe('aborted');
    });
  });

  it('Finding 11: an unreadable row is counted once, however many passes try it', async () => {
    const stub = new StubRotation();
    const bad = { tenantId: 'tenant-bad', reason: 'authentication failed' };
    stub.stalePerPass = [11, 1];
    stub.slices = [
      { counters: { rewrapped: 10, failed: 1 }, failures: [bad] },
      { counters: { failed: 1 }, failures: [bad] },
    ];
    const result = await stub.run(server.env, async () =>
      resultWithin<RotationReport>(await stub.start(server.env, { gracePeriod: '1s' })),
    );
    expect(stub.count('rewrapSlice')).toBe(2);
    expect(result.counters).toMatchObject({ rewrapped: 10, failed: 1 });
    expect(result.failedTenants).toEqual([bad]);
  });
});
