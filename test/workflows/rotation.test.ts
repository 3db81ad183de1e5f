import { Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveRotationReference, rotationWorkflowId, startRotation } from '../../src/client/rotations';
import type { RewrapSliceArgs } from '../../src/activities/rewrap';
import { tenantIdFor } from '../../src/dev/tenants';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TenantCrypto } from '../../src/tenant-crypto';
import { rotateKek, type RotationReport } from '../../src/workflows';
import { RotationFixture } from '../helpers/rotation-fixture';
import { startLiveWriter } from '../helpers/live-writer';
import { resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { fingerprintIn } from '../helpers/store-keys';

const DAY = 24 * 3600 * 1000;

describe('rotateKek on the time-skipping server, with real activities on real PostgreSQL', () => {
  const server = useTimeSkippingEnv();

  it('a full rotation with the default 7-day grace period runs on skipped time (7 days pass on the server within the test timeout): no stale DEK, every DEK byte-identical, from retired', async () => {
    const fixture = await RotationFixture.create({ tenants: 3_000 });
    try {
      const serverStart = await server.env.currentTimeMs();

      const result = await fixture.execute(server.env, { from: 'v1', to: 'v2' });

      expect(result.outcome).toBe('completed');
      expect(result.phase).toBe('done');
      expect(result.counters).toMatchObject({ rewrapped: 3_000, failed: 0, contended: 0 });
      expect(result.staleAtStart).toBe(3_000);
      expect(result.percent).toBe(100);
      expect(Object.keys(result.phases)).toEqual([
        'validate',
        'provision',
        'promote',
        'rewrap',
        'verify',
        'grace',
        'retire',
        'done',
      ]);
      expect(result.phases.grace!.endedAt! - result.phases.grace!.startedAt).toBeGreaterThanOrEqual(7 * DAY);
      expect((await server.env.currentTimeMs()) - serverStart).toBeGreaterThanOrEqual(7 * DAY);

      expect(await fixture.staleOn('v1')).toBe(0);
      expect(await fixture.kekState('v1')).toBe('retired');
      expect(await fixture.kekState('v2')).toBe('active');
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });

  it('a slice activity that fails midway resumes from its checkpoint, and the final counters count each tenant once', async () => {
    const fixture = await RotationFixture.create({ tenants: 4_000 });
    try {
      // A fault in PostgreSQL itself: the first write of tenant 2500 fails once (a sequence survives the rollback).
      await fixture.db.pool.query(`
        CREATE SEQUENCE fault_once;
        CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.tenant_id = 'tenant-00002500' AND nextval('fault_once') = 1 THEN
            RAISE EXCEPTION 'injected fault while writing %', NEW.tenant_id;
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER inject_fault BEFORE UPDATE ON rekey.tenant_deks FOR EACH ROW EXECUTE FUNCTION inject_fault();`);
      const real = fixture.activities();
      const attempts: { attempt: number; cursor?: string }[] = [];
      const activities = {
        ...real,
        async rewrapSlice(args: RewrapSliceArgs) {
          const info = Context.current().info;
          attempts.push({
            attempt: info.attempt,
            cursor: (info.heartbeatDetails as { cursor?: string } | undefined)?.cursor,
          });
          return real.rewrapSlice(args);
        },
      };
      const result = await fixture.execute(
        server.env,
        { from: 'v1', to: 'v2', batchSize: 100, parallelism: 1, gracePeriod: '1d' },
        activities,
      );
      expect(attempts.some((a) => a.attempt === 2)).toBe(true);
      const { rows } = await fixture.db.pool.query<{ rewrapped: string }>(
        `SELECT sum(rewrapped) AS rewrapped FROM rekey.rewrap_progress`,
      );
      expect(Number(rows[0]?.rewrapped)).toBe(4_000);
      expect(result.counters).toMatchObject({ rewrapped: 4_000, failed: 0 });
      expect(result.outcome).toBe('completed');
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });

  it('a concurrent writer during the run does not stop it from finishing clean', async () => {
    const fixture = await RotationFixture.create({ tenants: 5_000 });
    const app = new TenantCrypto({ db: fixture.db.pool, keys: fixture.keys, registryTtlMs: 100 });
    await app.start();
    const writer = startLiveWriter(app, () => tenantIdFor('tenant-', Math.floor(Math.random() * 5_000)));
    try {
      const result = await fixture.execute(server.env, {
        from: 'v1',
        to: 'v2',
        batchSize: 50,
        parallelism: 2,
        gracePeriod: '2d',
        fleetLiveWithin: '1h',
      });
      await writer.stop();
      expect(writer.writes).toBeGreaterThan(0);
      expect(result.outcome).toBe('completed');
      expect(await fixture.staleOn('v1')).toBe(0);
      expect(await fixture.kekState('v1')).toBe('retired');
      await fixture.expectNothingLost();
    } finally {
      await writer.stop();
      await app.stop();
      await fixture.drop();
    }
  });

  describe('invalid input fails fast with its message', () => {
    const cases: [string, RotationRequest, RegExp][] = [
      ['from equal to to', { from: 'v1', to: 'v1' }, /from and to are both 'v1'/],
      ['an unknown target KEK', { from: 'v1', to: 'v9' }, /unknown KEK 'v9'.*does not hold it/],
      ['an unknown source KEK', { from: 'nope', to: 'v2' }, /unknown KEK 'nope': neither the registry nor/],
      [
        'a source that is not the KEK in use',
        { from: 'v3', to: 'v2' },
        /'v3' is not the KEK in use \(the active KEK is 'v1'\)/,
      ],
      [
        'a target that is already retired',
        { from: 'v1', to: 'v3' },
        /KEK 'v3' is retired: a rotation never goes back to it/,
      ],
      [
        'a batch size out of range',
        { from: 'v1', to: 'v2', batchSize: 0 },
        /batchSize must be a whole number from 1 to 50000/,
      ],
      [
        'a grace period that is not a duration',
        { from: 'v1', to: 'v2', gracePeriod: 'soon' },
        /gracePeriod 'soon' is not a duration/,
      ],
      ['generating with a provider that cannot', { from: 'v1', to: 'new' }, /cannot generate KEKs/],
    ];
    let fixture: RotationFixture;
    beforeAll(async () => {
      fixture = await RotationFixture.create({ tenants: 10 });
      const registry = new KekRegistry(fixture.db.pool, BUILTIN_TARGET);
      await registry.register('v3', await fingerprintIn(fixture.keys, 'v3'));
      await registry.transition('v3', 'retired');
    });
    afterAll(async () => {
      await fixture?.drop();
    });

    it.each(cases)('%s', async (_what, request, message) => {
      // Fast means not retried: the validate step runs at most once (a request the workflow itself refuses runs no
      // step at all). Counted, not timed: a busy machine makes any wall-clock bound a coin toss.
      const activities = fixture.activities();
      let validations = 0;
      const counted = {
        ...activities,
        validateRotation: (...args: Parameters<typeof activities.validateRotation>) => {
          validations++;
          return activities.validateRotation(...args);
        },
      };
      const failure = await fixture.execute(server.env, request, counted).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(failure).toBeInstanceOf(WorkflowFailedError);
      expect((failure as WorkflowFailedError).cause?.message).toMatch(message);
      expect(validations).toBeLessThanOrEqual(1);
      expect(await fixture.kekState('v1')).toBe('active');
      expect(await fixture.staleOn('v1')).toBe(10);
    });
  });

  it('a second start of a finished rotation is told by the registry that it is already done, and the history replays and holds no key bytes', async () => {
    const fixture = await RotationFixture.create({ tenants: 500 });
    try {
      const request = { from: 'v1', to: 'v2', gracePeriod: '1d' };
      const keyspace = await keyspaceIn(fixture.db.pool);
      // A start answers once validate has decided: a worker runs while it is asked.
      const first = await (
        await fixture.worker(server.env)
      ).runUntil(async () => {
        const started = await startRotation(server.env.client, request, { taskQueue: fixture.taskQueue, keyspace });
        expect(started.kind).toBe('started');
        expect(await resultWithin<RotationReport>(started.handle)).toMatchObject({ outcome: 'completed' });
        return started;
      });
      const { workflowId } = first.handle;
      expect(workflowId).toBe(rotationWorkflowId(BUILTIN_TARGET, keyspace));

      const again = await (
        await fixture.worker(server.env)
      ).runUntil(async () => {
        const second = await startRotation(server.env.client, request, { taskQueue: fixture.taskQueue, keyspace });
        expect(second.handle.workflowId).toBe(workflowId);
        // The start's own answer says so, and so does the run's result.
        expect(second).toMatchObject({ kind: 'started', validated: { outcome: 'nothing-to-do' } });
        return resultWithin<RotationReport>(second.handle);
      });
      expect(again).toMatchObject({
        outcome: 'nothing-to-do',
        note: "nothing to do: already done: 'v1' is retired and 'v2' is the active KEK",
      });

      const firstRun = (await resolveRotationReference(first.opId)).firstRunId;
      const history = await server.env.client.workflow.getHandle(workflowId, firstRun).fetchHistory();
      await Worker.runReplayHistory({ workflowBundle: workflowBundle() }, history, workflowId);
      // Every payload decoded (they are base64 in the JSON form), and the raw form too.
      const payloads: string[] = [];
      const raw = JSON.stringify(history, (key, value: unknown) => {
        if (key === 'data' && typeof value === 'string') payloads.push(Buffer.from(value, 'base64').toString('utf8'));
        return value;
      });
      const decoded = payloads.join('\n');
      expect(decoded).toContain('"to":"v2"');
      expect(decoded).toContain('"outcome":"completed"');
      for (const secret of fixture.secrets) {
        expect(raw).not.toContain(secret);
        expect(decoded).not.toContain(secret);
      }
    } finally {
      await fixture.drop();
    }
  });

  it('a run over more tenants than one history holds continues as new and ends with correct totals', async () => {
    const fixture = await RotationFixture.create({ tenants: 3_000 });
    try {
      const worker = await fixture.worker(server.env);
      const handle = await server.env.client.workflow.start(rotateKek, {
        taskQueue: fixture.taskQueue,
        workflowId: await rotationIdIn(fixture.db.pool),
        args: [
          {
            from: 'v1',
            to: 'v2',
            batchSize: 20,
            parallelism: 2,
            sliceTimeBudget: '100ms',
            maxHistoryEvents: 60,
            gracePeriod: '1d',
          },
        ],
      });
      const result = await worker.runUntil(resultWithin<RotationReport>(handle));
      const latest = await server.env.client.workflow.getHandle(handle.workflowId).describe();
      expect(latest.runId).not.toBe(handle.firstExecutionRunId);
      expect(latest.historyLength).toBeLessThan(200);
      expect(result.outcome).toBe('completed');
      expect(result.counters.rewrapped).toBe(3_000);
      expect(await fixture.staleOn('v1')).toBe(0);
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });
});
