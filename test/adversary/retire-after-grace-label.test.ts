// Adversary of verify's check of the rows labelled `to` (safety4: every row labelled `to` is opened under `to` before
// grace, and one sealed under `from` fails the run with `from` kept). The check runs once, before the grace period;
// the retire proof that follows it tries only the rows labelled `from`. A row labelled `to` whose value is still under
// `from` that appears during the grace period (the application's bad write, a backup restored: the cases the check is
// for) is seen by nothing: the rotation completes, `from` is retired, and the destruction at the end of its window
// loses the row. Against PostgreSQL and the time-skipping server, the bad row written with the fixture's own crypto.
import { randomBytes, randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { seedTenants } from '../../src/dev/tenants';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { setGraceUpdate } from '../../src/workflows';
import { createTestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { wrapRekeyDek } from '../helpers/rekey-format';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

describe("adversary: a row labelled 'to' but sealed under 'from' that appears during the grace period", () => {
  const server = useTimeSkippingEnv();

  it("keeps 'v1' from being retired: the run does not end with v1 retired while that row opens under v1 alone", async () => {
    const db = await createTestDatabase();
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v1');
    const taskQueue = `retire-after-grace-${randomUUID()}`;
    try {
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(provider, 'v1'));
      await seedTenants({ db: db.pool, keys: provider, kekId: 'v1', count: 200 });
      const v1 = Buffer.from(env.TEST_KEK_v1!, 'base64url');
      const bad = wrapRekeyDek(v1, 'v1', 'c-restored', randomBytes(32));
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: provider }),
      });
      await worker.runUntil(async () => {
        const { handle } = await startRotation(
          server.env.client,
          { target: BUILTIN_TARGET, from: 'v1', to: 'v2', gracePeriod: '1d', restoreWindow: '30d' },
          { taskQueue, keyspace: await keyspaceIn(db.pool) },
        );
        await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 90_000 });
        // During the grace period: the row restored from a backup taken mid-rotation, labelled v2, sealed under v1.
        await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`, [
          'c-restored',
          bad,
        ]);
        await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
        // The run's answer (completed, or refused at retire) is not the point: what it left in the registry is.
        await resultWithin(handle, 120_000).catch(() => undefined);
      });
      // Whatever the run answered, v1 is not retired: the row still needs it.
      expect((await new KekRegistry(db.pool, BUILTIN_TARGET).require('v1')).state).not.toBe('retired');
    } finally {
      provider.close();
      await db.drop();
    }
  });
});
