import { WorkflowFailedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import { overrideFleetGateUpdate, progressQuery, setGraceUpdate, type RotationReport } from '../../src/workflows';
import { RotationFixture } from '../helpers/rotation-fixture';
import { progressUntil, resultWithin, skipTime, useTimeSkippingEnv } from '../helpers/temporal';

const DAY = 86_400_000;

describe('rotateKek controls: grace, fleet gate, dry run, canary', () => {
  const server = useTimeSkippingEnv();

  it('an update extends the grace period and answers with the new end; another ends it now', async () => {
    const fixture = await RotationFixture.create({ tenants: 200 });
    try {
      const result = await fixture.drive(server.env, { from: 'v1', to: 'v2', gracePeriod: '7d' }, async (handle) => {
        await progressUntil(handle, (p) => p.phase === 'grace');
        const before = (await handle.query(progressQuery)).graceEndsAt!;
        const extended = await handle.executeUpdate(setGraceUpdate, { args: [{ extendBy: '2d' }] });
        expect(Date.parse(extended.graceEndsAt!)).toBe(before + 2 * DAY);
        const refused = await handle
          .executeUpdate(setGraceUpdate, { args: [{ extendBy: 'a while' }] })
          .catch((e: unknown) => e);
        expect(refused).toBeInstanceOf(WorkflowUpdateFailedError);
        expect((refused as WorkflowUpdateFailedError).cause?.message).toBe(
          "extendBy 'a while' is not a duration like 2d, 12h or 30m",
        );
        await skipTime(server.env, '8d');
        expect((await handle.query(progressQuery)).phase).toBe('grace');
        expect(await fixture.kekState('v1')).toBe('decrypt_only');
        const ended = await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
        expect(Date.parse(ended.graceEndsAt!)).toBeLessThan(before + 2 * DAY);
        return resultWithin<RotationReport>(handle);
      });
      expect(result.outcome).toBe('completed');
      expect(await fixture.kekState('v1')).toBe('retired');
    } finally {
      await fixture.drop();
    }
  });

  it('promotion waits for a live instance that cannot unwrap the new KEK; an operator override lets it go on', async () => {
    const fixture = await RotationFixture.create({ tenants: 100 });
    await fixture.announceOldInstance('old-pod-1');
    try {
      const request = { from: 'v1', to: 'v2', gracePeriod: '1d', fleetLiveWithin: '30d', fleetTimeout: '10d' };
      const result = await fixture.drive(server.env, request, async (handle) => {
        await progressUntil(handle, (p) => p.phase === 'promote');
        await skipTime(server.env, '1h');
        const waiting = await handle.query(progressQuery);
        expect(waiting.phase).toBe('promote');
        expect(waiting.fleet).toEqual({ live: 1, ready: 0, waitingFor: ['old-pod-1'] });
        expect(await fixture.kekState('v2')).toBe('provisioned');
        const overridden = await handle.executeUpdate(overrideFleetGateUpdate, {
          args: ['old-pod-1 is being drained'],
        });
        expect(overridden.note).toBe('fleet gate overridden: old-pod-1 is being drained');
        // The override was for promotion: the gate before the last passes waits for old-pod-1 again.
        const again = await progressUntil(handle, (p) => p.waiting?.step === 'last-passes', {
          env: server.env,
          skip: '10m',
        });
        expect(again.fleet?.waitingFor).toEqual(['old-pod-1']);
        await handle.executeUpdate(overrideFleetGateUpdate, { args: ['old-pod-1 is gone'] });
        return resultWithin<RotationReport>(handle);
      });
      expect(result.outcome).toBe('completed');
    } finally {
      await fixture.drop();
    }
  });

  it('promotion fails after the fleet timeout, naming the instances, and promotes nothing', async () => {
    const fixture = await RotationFixture.create({ tenants: 100 });
    await fixture.announceOldInstance('old-pod-2');
    try {
      const failure = await fixture
        .execute(server.env, { from: 'v1', to: 'v2', fleetLiveWithin: '30d', fleetTimeout: '2h' })
        .catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(WorkflowFailedError);
      expect((failure as WorkflowFailedError).cause?.message).toBe(
        "fleet not ready after 2h 0m: 1 of 1 live instance(s) cannot unwrap with 'v2' (old-pod-2); deploy the registered key to them, or override the fleet gate",
      );
      expect(await fixture.kekState('v1')).toBe('active');
      expect(await fixture.staleOn('v1')).toBe(100);
    } finally {
      await fixture.drop();
    }
  });

  it('a dry run reports Migrated / Already done and writes nothing: no provision, no promotion', async () => {
    const fixture = await RotationFixture.create({ tenants: 700 });
    try {
      const result = await fixture.execute(server.env, { from: 'v1', to: 'v2', dryRun: true });
      expect(result.outcome).toBe('dry-run');
      expect(result.counters).toMatchObject({ rewrapped: 700, alreadyOnTarget: 0, failed: 0 });
      expect(await fixture.staleOn('v1')).toBe(700);
      expect(await fixture.kekState('v2')).toBeUndefined();
      expect(await fixture.kekState('v1')).toBe('active');
      expect((await fixture.db.pool.query('SELECT 1 FROM rekey.rewrap_progress')).rowCount).toBe(0);
    } finally {
      await fixture.drop();
    }
  });

  it('a canary rotates one tenant under the new, still provisioned, KEK and stops there', async () => {
    const fixture = await RotationFixture.create({ tenants: 50 });
    try {
      const result = await fixture.execute(server.env, { from: 'v1', to: 'v2', tenantId: 'tenant-00000007' });
      expect(result.outcome).toBe('canary');
      expect(result.counters.rewrapped).toBe(1);
      expect(await fixture.staleOn('v1')).toBe(49);
      expect(await fixture.kekState('v2')).toBe('provisioned');
      expect(await fixture.kekState('v1')).toBe('active');
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });
});
