import { randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { KekRegistry } from '../../src/store/kek-registry';
import { confirmStepUpdate, setGraceUpdate, type RotationReport } from '../../src/workflows';
import { RetireRefusedError } from '../../src/errors';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import {
  checkWithOneKek,
  createMyceliumSchema,
  kekOf,
  seedMyceliumTenants,
  wrapDek,
  type SeededTenant,
} from '../helpers/mycelium';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

/** Rows labelled with a generation (with a DEK), by plain SQL. */
async function labelled(db: TestDatabase, generation: number): Promise<number> {
  const { rows } = await db.pool.query<{ n: string }>(
    'SELECT count(*) AS n FROM public.tenant WHERE kek_version = $1 AND encrypted_dek IS NOT NULL',
    [generation],
  );
  return Number(rows[0]!.n);
}

describe('retire proves every row labelled with the old KEK, on a Mycelium-shaped database', () => {
  const server = useTimeSkippingEnv();
  // The gateway's token_secrets: generation 1 (MYC_OLD_TOKEN_SECRET) and 2 (the new one).
  const [gen1, gen2] = [randomUUID(), randomUUID()];
  const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };
  const activities = (db: TestDatabase) => createActivities({ db: db.pool, keys: testKeys(['v1']), env });

  it.each([10_000, 10_001])(
    'Finding 4: %i DEKs provisioned after the last pass (under generation 2, labelled 1) are each proved and relabelled before the operator is asked to discard generation 1, and generation 1 retires',
    async (late) => {
      const { db } = await createApplicationDatabase(createMyceliumSchema);
      const taskQueue = `retire-proof-${randomUUID()}`;
      try {
        const onGen1 = await seedMyceliumTenants(db.pool, 200, kekOf(gen1), 1);
        const worker = await Worker.create({
          connection: server.env.nativeConnection,
          taskQueue,
          workflowBundle: workflowBundle(),
          activities: activities(db),
        });
        let provisionedLate: SeededTenant[] = [];
        const report = await worker.runUntil(async () => {
          const { handle } = await startRotation(
            server.env.client,
            { target: 'mycelium', from: '1', to: '2', gracePeriod: '1d', sliceTimeBudget: '1s' },
            { taskQueue },
          );
          await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
          // The gateway provisions DEKs lazily with its current token_secret, leaving kek_version at its default 1.
          provisionedLate = await seedMyceliumTenants(db.pool, late, kekOf(gen2), 1);
          await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
          const asked = await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 90_000 });
          // When the run asks to discard generation 1, no row is labelled 1 any more: every one was proved.
          expect(await labelled(db, 1)).toBe(0);
          expect(asked.retireProof).toMatchObject({
            stage: 'before-confirm',
            done: true,
            tried: late,
            relabelled: late,
            needed: 0,
          });
          await handle.executeUpdate(confirmStepUpdate, {
            args: [{ step: 'retire', note: 'old token_secret removed from Vault' }],
          });
          return resultWithin<RotationReport>(handle, 90_000);
        });
        expect(report.outcome).toBe('completed');
        expect(report.counters).toMatchObject({ rewrapped: 200, relabelled: late, failed: 0 });
        expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'retired' });
        // With the new token_secret alone (the fixture's own AES-GCM), every row labelled 2.
        expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, [...onGen1, ...provisionedLate])).toEqual([]);
      } finally {
        await db.drop();
      }
    },
  );

  it('Finding 4: retireKek proves every row still labelled with the old KEK under the lock, with no cap: 10,001 mislabelled rows are relabelled; a row still under it refuses, named, and nothing is retired', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    try {
      const steps = activities(db);
      const moved = await seedMyceliumTenants(db.pool, 10, kekOf(gen2), 2);
      // Generation 1 active, then 2 provisioned and promoted, as a rotation leaves them before retire.
      await steps.validateRotation({ target: 'mycelium', from: '1', to: '2' });
      await steps.provisionKek({ target: 'mycelium', kekId: '2', generate: false, from: '1' });
      await steps.promoteKek({ target: 'mycelium', from: '1', to: '2' });
      const mislabelled = await seedMyceliumTenants(db.pool, 10_001, kekOf(gen2), 1);
      const [stale] = await seedMyceliumTenants(db.pool, 1, kekOf(gen1), 1);

      const refusal = await steps.retireKek({ target: 'mycelium', from: '1' }).catch((err: unknown) => err);
      expect(refusal).toBeInstanceOf(RetireRefusedError);
      expect((refusal as Error).message).toContain(
        `KEK '1' still wraps 1 DEK(s) in public.tenant: not retiring it. The first 1: ${stale!.id} (its value is under '1')`,
      );
      const registry = new KekRegistry(db.pool, 'mycelium');
      expect(await registry.get('1')).toMatchObject({ state: 'decrypt_only' });
      // What it proved under the lock stays proved: only the row that needs generation 1 is labelled 1.
      expect(await labelled(db, 1)).toBe(1);

      // The application rewrote that DEK under generation 2 (and labelled it so): nothing needs generation 1.
      await db.pool.query('UPDATE public.tenant SET encrypted_dek = $2, kek_version = 2 WHERE id = $1', [
        stale!.id,
        wrapDek(kekOf(gen2), stale!.id, stale!.dek!),
      ]);
      const retired = await steps.retireKek({ target: 'mycelium', from: '1', progressKey: `retire-${randomUUID()}` });
      expect(retired.relabelled).toBe(0);
      expect(await registry.get('1')).toMatchObject({ state: 'retired' });
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, [...moved, ...mislabelled, stale!])).toEqual([]);
    } finally {
      await db.drop();
    }
  });

  it('retireKek counts the rows it relabels under the lock exactly once, in its progress row', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    try {
      const steps = activities(db);
      await seedMyceliumTenants(db.pool, 10, kekOf(gen2), 2);
      await steps.validateRotation({ target: 'mycelium', from: '1', to: '2' });
      await steps.provisionKek({ target: 'mycelium', kekId: '2', generate: false, from: '1' });
      await steps.promoteKek({ target: 'mycelium', from: '1', to: '2' });
      const mislabelled = await seedMyceliumTenants(db.pool, 2_345, kekOf(gen2), 1);
      const progressKey = `retire-${randomUUID()}`;
      const first = await steps.retireKek({ target: 'mycelium', from: '1', progressKey });
      // A retry of a step that succeeded (its answer lost) finds it retired and answers the same count.
      const again = await steps.retireKek({ target: 'mycelium', from: '1', progressKey });
      expect([first.relabelled, again.relabelled]).toEqual([2_345, 2_345]);
      expect(again.retiredAt).toBe(first.retiredAt);
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, mislabelled)).toEqual([]);
    } finally {
      await db.drop();
    }
  });
});
