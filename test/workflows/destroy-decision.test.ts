import { randomUUID } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import {
  confirmStepUpdate,
  DESTROY_DECIDED_PATCH,
  rotateKek,
  setGraceUpdate,
  type RotationReport,
} from '../../src/workflows';
import { legacyDestroyWorkflowId } from '../../src/rotation/identity';
import { createApplicationDatabase } from '../helpers/database';
import { destroyIdIn, keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { testKeys } from '../helpers/keys';
import { checkWithOneKek, createMyceliumSchema, kekOf, seedMyceliumTenants } from '../helpers/mycelium';
import { RotationFixture } from '../helpers/rotation-fixture';
import { workflowBundleOf } from '../helpers/old-build';
import { createDevServerEnv, progressUntil, resultWithin, workflowBundle } from '../helpers/temporal';

/** The last build that decided at retirement whether to schedule a destruction (patched() is true whenever live). */
const BUILD_BEFORE = '37c2df132c64c06374c594eecba176ca74c24168';

/**
 * A rotation started by that build, deployed over mid-run: on the dev server (real time, so that nothing skips the
 * destruction's timer), its worker replaced by this build's while the run is in grace.
 */
describe("whether a retirement schedules its KEK's destruction is decided when the run starts", () => {
  let env: TestWorkflowEnvironment;
  let fixture: RotationFixture;
  beforeAll(async () => {
    env = await createDevServerEnv();
    fixture = await RotationFixture.create({ tenants: 200 });
  });
  afterAll(async () => {
    await fixture?.drop();
    await env?.teardown();
  });

  function worker(code: { code: string }): Promise<Worker> {
    return Worker.create({
      connection: env.nativeConnection,
      taskQueue: fixture.taskQueue,
      workflowBundle: code,
      activities: fixture.activities(),
    });
  }

  it('Finding 7: a rotation started by a build that decided only at retirement, which reaches retire after the upgrade, schedules no destruction, and its progress says why', async () => {
    const before = await worker(await workflowBundleOf(BUILD_BEFORE));
    const handle = await env.client.workflow.start(rotateKek, {
      taskQueue: fixture.taskQueue,
      workflowId: `rotation-${randomUUID()}`,
      args: [{ from: 'v1', to: 'v2', gracePeriod: '7d', fleetLiveWithin: '1h' }],
    });
    await before.runUntil(progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 60_000 }));

    // The upgrade: this build's worker takes the run over, replays what the earlier one wrote, and ends grace.
    const after = await worker(workflowBundle());
    const report = await after.runUntil(async () => {
      await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
      return resultWithin<RotationReport>(handle, 90_000);
    });
    expect(report.outcome).toBe('completed');
    expect(await fixture.kekState('v1')).toBe('retired');
    expect(report.destruction).toEqual({
      scheduled: false,
      why: `the run was started by a build that decided only at retirement (before ${DESTROY_DECIDED_PATCH}): no destruction is scheduled, and the retired KEK stays retired`,
    });
    // None under the id an earlier build's run gives its destruction, nor under its keyspace's.
    for (const id of [legacyDestroyWorkflowId(BUILTIN_TARGET, 'v1'), await destroyIdIn(fixture.db.pool, 'v1')]) {
      await expect(env.client.workflow.getHandle(id).describe()).rejects.toThrow(WorkflowNotFoundError);
    }
    await fixture.expectNothingLost();
  });

  it('Finding 7: a rotation the earlier build brought to its retire step (waiting for the operator), confirmed after the upgrade, schedules no destruction', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    const taskQueue = `mycelium-${randomUUID()}`;
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    const activities = createActivities({
      db: db.pool,
      keys: testKeys(['v1']),
      env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
    });
    const onBuild = async (code: { code: string }) =>
      Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle: code, activities });
    try {
      const tenants = await seedMyceliumTenants(db.pool, 50, kekOf(gen1), 1);
      // Started while the earlier build's worker runs: a start waits for the run's first answer (that build has no
      // validate update, and says so, which the start takes as started without a verdict).
      const before = await onBuild(await workflowBundleOf(BUILD_BEFORE));
      const handle = await before.runUntil(async () => {
        const started = await startRotation(
          env.client,
          { target: 'mycelium', from: '1', to: '2', gracePeriod: '1s' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil(started.handle, (p) => p.waiting?.step === 'retire', { withinMs: 60_000 });
        return started.handle;
      });

      const after = await onBuild(workflowBundle());
      const report = await after.runUntil(async () => {
        await handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: 'generation 1 removed' }] });
        return resultWithin<RotationReport>(handle, 90_000);
      });
      expect(report.outcome).toBe('completed');
      expect(report.destruction).toMatchObject({ scheduled: false });
      expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'retired' });
      for (const id of [legacyDestroyWorkflowId('mycelium', '1'), await destroyIdIn(db.pool, '1', 'mycelium')]) {
        await expect(env.client.workflow.getHandle(id).describe()).rejects.toThrow(WorkflowNotFoundError);
      }
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, tenants)).toEqual([]);
    } finally {
      await db.drop();
    }
  });

  it("a rotation started by this build decides at its start, says so from its first query, and schedules the retired KEK's destruction", async () => {
    const current = await worker(workflowBundle());
    const report = await current.runUntil(async () => {
      const handle = await env.client.workflow.start(rotateKek, {
        taskQueue: fixture.taskQueue,
        workflowId: await rotationIdIn(fixture.db.pool),
        args: [{ from: 'v2', to: 'v3', gracePeriod: '7d', fleetLiveWithin: '1h', restoreWindow: '30d' }],
      });
      const first = await progressUntil(handle, (p) => p.destruction !== undefined, { withinMs: 30_000 });
      expect(first.destruction).toEqual({
        scheduled: true,
        why: expect.stringMatching(
          /^decided when the run started: the retired KEK is destroyed once its restore window \(30d\b.*\) ends$/,
        ) as unknown,
      });
      await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
      await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
      return resultWithin<RotationReport>(handle, 90_000);
    });
    expect(report.outcome).toBe('completed');
    const destroyId = await destroyIdIn(fixture.db.pool, 'v2');
    const destruction = await env.client.workflow.getHandle(destroyId).describe();
    expect(destruction.status.name).toBe('RUNNING');
    await env.client.workflow.getHandle(destroyId).terminate('test over');
  });
});
