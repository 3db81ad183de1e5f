// Finding 1 of "Safety": keys were trusted by id alone. A worker or an application instance holding another key
// under the right id ('v2' from a second `openssl rand`) is now refused by fingerprint, before anything is written.
import { randomBytes } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { WorkerPresence } from '../../src/targets/worker-presence';
import { TenantCrypto } from '../../src/tenant-crypto';
import { rotateKek } from '../../src/workflows';
import { RotationFixture } from '../helpers/rotation-fixture';
import { resultWithin, useTimeSkippingEnv } from '../helpers/temporal';
import { rotationIdIn } from '../helpers/keyspace';
import { fingerprintIn } from '../helpers/store-keys';

/** The fixture's own 'v1', and a 'v2' of its own making: another key under the registered id. */
function impostorKeys(fixture: RotationFixture): EnvKeyProvider {
  return new EnvKeyProvider(
    { TEST_KEK_v1: fixture.secrets[0], TEST_KEK_v2: randomBytes(32).toString('base64url'), TEST_CURRENT_KEK_ID: 'v1' },
    'TEST',
  );
}

async function failureOf(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowFailedError);
  return (err as WorkflowFailedError).cause?.message ?? '';
}

describe('Finding 1: keys are trusted by fingerprint, not by id', () => {
  const server = useTimeSkippingEnv();

  it('a worker holding another key under the name of the registered new KEK fails the rotation before writing, naming both fingerprints', async () => {
    const fixture = await RotationFixture.create({ tenants: 500 });
    const impostor = impostorKeys(fixture);
    try {
      // 'v2' was registered (by a worker holding the real one); this worker holds a different 'v2'.
      await new KekRegistry(fixture.db.pool, BUILTIN_TARGET).register('v2', await fingerprintIn(fixture.keys, 'v2'));
      const activities = createActivities({ db: fixture.db.pool, keys: impostor });
      const message = await failureOf(
        fixture.execute(server.env, { from: 'v1', to: 'v2', gracePeriod: '1h' }, activities),
      );
      expect(message).toContain(await fingerprintIn(fixture.keys, 'v2'));
      expect(message).toContain(await fingerprintIn(impostor, 'v2'));
      expect(await fixture.staleOn('v1')).toBe(500);
      expect(await fixture.kekState('v1')).toBe('active');
      expect(await fixture.kekState('v2')).toBe('provisioned');
      await fixture.expectNothingLost();
    } finally {
      impostor.close();
      await fixture.drop();
    }
  });

  it('the fleet gate does not count an application instance that holds another key under the new KEK’s id', async () => {
    const fixture = await RotationFixture.create({ tenants: 100 });
    const impostor = impostorKeys(fixture);
    const app = new TenantCrypto({ db: fixture.db.pool, keys: impostor, instanceId: 'pod-with-other-v2' });
    await app.start();
    try {
      const worker = await fixture.worker(server.env);
      const message = await worker.runUntil(async () => {
        const handle = await server.env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [{ from: 'v1', to: 'v2', gracePeriod: '1h', fleetTimeout: '1h', fleetLiveWithin: '30d' }],
        });
        return failureOf(resultWithin(handle));
      });
      expect(message).toMatch(/^fleet not ready after 1h 0m: 1 of 1 live instance\(s\) cannot unwrap with 'v2'/);
      expect(message).toContain(
        `pod-with-other-v2 (holds ${await fingerprintIn(impostor, 'v2')}, registry ${await fingerprintIn(fixture.keys, 'v2')})`,
      );
      expect(await fixture.kekState('v2')).toBe('provisioned');
      expect(await fixture.staleOn('v1')).toBe(100);
    } finally {
      await app.stop();
      impostor.close();
      await fixture.drop();
    }
  });

  it('a worker that holds another key under the new KEK’s id holds the promotion, named, instead of failing slices midway', async () => {
    const fixture = await RotationFixture.create({ tenants: 100 });
    const impostor = impostorKeys(fixture);
    // A second worker process's presence: it serves rekey's own table with its own 'v2'.
    const presence = new WorkerPresence(new TargetRuntimes({ db: fixture.db.pool, keys: impostor }), () => undefined, {
      instanceId: 'worker-other-host',
    });
    await presence.start();
    try {
      const worker = await fixture.worker(server.env);
      const message = await worker.runUntil(async () => {
        const handle = await server.env.client.workflow.start(rotateKek, {
          taskQueue: fixture.taskQueue,
          workflowId: await rotationIdIn(fixture.db.pool),
          args: [{ from: 'v1', to: 'v2', gracePeriod: '1h', fleetTimeout: '1h', fleetLiveWithin: '30d' }],
        });
        return failureOf(resultWithin(handle));
      });
      expect(message).toContain(
        `worker-other-host (holds ${await fingerprintIn(impostor, 'v2')}, registry ${await fingerprintIn(fixture.keys, 'v2')})`,
      );
      expect(await fixture.kekState('v2')).toBe('provisioned');
      expect(await fixture.staleOn('v1')).toBe(100);
    } finally {
      await presence.stop();
      impostor.close();
      await fixture.drop();
    }
  });
});
