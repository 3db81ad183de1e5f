// A rotation started with the operator's reason to go on while legacy values remain (--allow-legacy-values) gives
// that reason to its retire step (patched('legacy5-retire-legacy-values-1')): the step, which refuses while a legacy
// value opens under the KEK it retires, retires it. Mycelium against PostgreSQL and the time-skipping server, with
// the fixture's own crypto (test/helpers/mycelium.ts).
import { randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { KekRegistry } from '../../src/store/kek-registry';
import { confirmStepUpdate, type RotationReport } from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import {
  createMyceliumSchema,
  gatewayReads,
  insertLegacyTotpUser,
  kekOf,
  myceliumShape,
  seedMyceliumTenants,
  SYSTEM_TENANT,
} from '../helpers/mycelium';
import { progressUntil, resultWithin, skipTime, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

describe('the retire step of a run started with --allow-legacy-values', () => {
  const server = useTimeSkippingEnv();

  it("is given the run's reason and retires generation 1 although a v1 TOTP secret still opens under it", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    const taskQueue = `retire-legacy-${randomUUID()}`;
    try {
      await db.pool.query(`INSERT INTO public.tenant (id, name) VALUES ($1, 'system')`, [SYSTEM_TENANT]);
      await seedMyceliumTenants(db.pool, 5, kekOf(gen1), 1);
      const value = await insertLegacyTotpUser(db.pool, kekOf(gen1), 'kept@example.com', 'JBSWY3DPEHPK3PXP');
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({
          db: db.pool,
          keys: testKeys(['v1']),
          env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
        }),
      });
      const report = await worker.runUntil(async () => {
        const started = await startRotation(
          server.env.client,
          {
            target: 'mycelium',
            from: '1',
            to: '2',
            gracePeriod: '1d',
            allowLegacyValues: 'the restored user re-enrolls TOTP',
          },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil(started.handle, (p) => p.phase === 'grace', { env: server.env });
        await skipTime(server.env, '1d');
        await progressUntil(started.handle, (p) => p.waiting?.step === 'retire', { env: server.env });
        await started.handle.executeUpdate(confirmStepUpdate, {
          args: [{ step: 'retire', note: 'generation 1 removed' }],
        });
        return resultWithin<RotationReport>(started.handle);
      });
      expect(report.outcome).toBe('completed');
      expect((await new KekRegistry(db.pool, 'mycelium').require('1')).state).toBe('retired');
      // The value is still v1 under generation 1: the reason was the operator's.
      expect(await gatewayReads(db.pool, kekOf(gen1), value)).toBe(value.plaintext);
    } finally {
      await db.drop();
    }
  });
});
