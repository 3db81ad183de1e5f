// Issue 25, "tctl, as the operators in the design use it": tctl has no update command, so every operator action of a
// rotation is also a signal, under the update's name, run by the update's own handler body. These tests send signals
// only (no update): what a signal did, or why it was refused, is read from the `progress` query.
import { describe, expect, it } from 'vitest';
import {
  confirmStepSignal,
  overrideFleetGateSignal,
  progressQuery,
  setGraceSignal,
  type RotationReport,
} from '../../src/workflows';
import { RotationFixture } from '../helpers/rotation-fixture';
import { progressUntil, resultWithin, useTimeSkippingEnv } from '../helpers/temporal';

const DAY = 86_400_000;

describe('every operator update of a rotation is also a signal (tctl has no updates)', () => {
  const server = useTimeSkippingEnv();

  it('the fleet override and the grace change, sent as signals, take a rotation to its end with no update sent', async () => {
    const fixture = await RotationFixture.create({ tenants: 100 });
    await fixture.announceOldInstance('old-pod-1');
    try {
      const request = { from: 'v1', to: 'v2', gracePeriod: '7d', fleetLiveWithin: '30d', fleetTimeout: '10d' };
      const result = await fixture.drive(server.env, request, async (handle) => {
        await progressUntil(handle, (p) => p.waiting?.kind === 'fleet' && p.waiting.step === 'promote');
        // Before grace: the signal changes the period grace will start with, and says so in the progress.
        await handle.signal(setGraceSignal, { endNow: true });
        const set = await progressUntil(handle, (p) => p.note?.startsWith('grace period') === true);
        expect(set.note).toBe('grace period set to 0ms: it starts once verify passes');
        expect(set.phase).toBe('promote');

        await handle.signal(overrideFleetGateSignal, 'old-pod-1 is being drained');
        // The override was for promotion: the gate before the last passes waits for old-pod-1 again.
        const again = await progressUntil(handle, (p) => p.waiting?.step === 'last-passes', {
          env: server.env,
          skip: '10m',
        });
        expect(again.fleet?.waitingFor).toEqual(['old-pod-1']);
        expect(await fixture.kekState('v2')).toBe('active');
        await handle.signal(overrideFleetGateSignal, 'old-pod-1 is gone');
        return resultWithin<RotationReport>(handle);
      });
      expect(result.outcome).toBe('completed');
      expect(await fixture.kekState('v1')).toBe('retired');
      await fixture.expectNothingLost();
    } finally {
      await fixture.drop();
    }
  });

  it("a refused signal changes nothing, and the progress says why in the update's words", async () => {
    const fixture = await RotationFixture.create({ tenants: 50 });
    try {
      const result = await fixture.drive(server.env, { from: 'v1', to: 'v2', gracePeriod: '7d' }, async (handle) => {
        const inGrace = await progressUntil(handle, (p) => p.phase === 'grace');
        const endsAt = inGrace.graceEndsAt!;
        const noteAfter = async (send: () => Promise<void>): Promise<RotationReport> => {
          const before = (await handle.query(progressQuery)).note;
          await send();
          return progressUntil(handle, (p) => p.note !== before);
        };

        const override = await noteAfter(() => handle.signal(overrideFleetGateSignal, 'pods drained'));
        expect(override.note).toBe(
          'overrideFleetGate signal ignored: nothing waits for the fleet now: override when `status` shows the fleet gate waiting',
        );
        const confirm = await noteAfter(() =>
          handle.signal(confirmStepSignal, { step: 'retire', note: 'old key removed' }),
        );
        expect(confirm.note).toBe(
          "confirmStep signal ignored: target 'rekey' reads its current KEK from rekey's registry: there is nothing to confirm",
        );
        const badGrace = await noteAfter(() => handle.signal(setGraceSignal, { extendBy: 'a while' }));
        expect(badGrace.note).toBe("setGrace signal ignored: extendBy 'a while' is not a duration like 2d, 12h or 30m");
        // What tctl sends for a signal given no --input: refused with the reason, not a failed workflow task.
        const noInput = await noteAfter(() => handle.signal('setGrace'));
        expect(noInput.note).toBe('setGrace signal ignored: give exactly one of extendBy (e.g. "2d") or endNow');
        expect(noInput).toMatchObject({ phase: 'grace', graceEndsAt: endsAt, outcome: 'running' });

        const extended = await noteAfter(() => handle.signal(setGraceSignal, { extendBy: '2d' }));
        expect(extended.graceEndsAt).toBe(endsAt + 2 * DAY);
        expect(extended.note).toBe(`grace ends at ${new Date(endsAt + 2 * DAY).toISOString()}`);
        expect(await fixture.kekState('v1')).toBe('decrypt_only');
        await handle.signal(setGraceSignal, { endNow: true });
        return resultWithin<RotationReport>(handle);
      });
      expect(result.outcome).toBe('completed');
      expect(await fixture.kekState('v1')).toBe('retired');
    } finally {
      await fixture.drop();
    }
  });
});
