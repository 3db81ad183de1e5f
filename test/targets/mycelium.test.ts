import { randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { describeCounters } from '../../src/cli/format';
import { startRotation } from '../../src/client/rotations';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import { confirmStepUpdate, type RotationReport } from '../../src/workflows';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { rotationWorkflowId } from '../../src/rotation/identity';
import {
  checkWithOneKek,
  createMyceliumSchema,
  kekOf,
  MyceliumGateway,
  myceliumShape,
  seedMyceliumTenants,
  type SeededTenant,
} from '../helpers/mycelium';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

describe('the mycelium preset on a Mycelium-shaped database, through Temporal', () => {
  const server = useTimeSkippingEnv();
  // The gateway's token_secrets: generation 1 (MYC_OLD_TOKEN_SECRET), 2 (the new one), and a third, untouched.
  const [gen1, gen2, gen3] = [randomUUID(), randomUUID(), randomUUID()];
  const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };

  function worker(db: TestDatabase, taskQueue: string): Promise<Worker> {
    return Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }),
    });
  }

  it('rotate --from-version 1 --to-version 2 while the gateway works: every DEK and every data field reads with the new token_secret alone, counters as seeded, no column added', async () => {
    const { db, shape } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `mycelium-${randomUUID()}`;
    const gateway = new MyceliumGateway(db.pool, [kekOf(gen1), kekOf(gen2), kekOf(gen3)], kekOf(gen2), []);
    try {
      const onGen1 = await seedMyceliumTenants(db.pool, 300, kekOf(gen1), 1);
      const onGen2 = await seedMyceliumTenants(db.pool, 50, kekOf(gen2), 2);
      const onGen3 = await seedMyceliumTenants(db.pool, 20, kekOf(gen3), 3);
      const withoutDek = await seedMyceliumTenants(db.pool, 30, null, 1);
      // Provisioned lazily after the gateway switched to the new token_secret: wrapped by generation 2, labelled 1.
      const mislabelled = await seedMyceliumTenants(db.pool, 15, kekOf(gen2), 1);
      const all = [...onGen1, ...onGen2, ...onGen3, ...withoutDek, ...mislabelled];
      const live = new MyceliumGateway(db.pool, [kekOf(gen1), kekOf(gen2), kekOf(gen3)], kekOf(gen2), all);
      live.start({ onboard: true });

      const running = await worker(db, taskQueue);
      const report = await running.runUntil(async () => {
        const request: RotationRequest = { target: 'mycelium', from: '1', to: '2', gracePeriod: '1d' };
        const keyspace = await keyspaceIn(db.pool, 'mycelium');
        const started = await startRotation(server.env.client, request, { taskQueue, keyspace });
        expect(started.handle.workflowId).toBe(rotationWorkflowId('mycelium', keyspace));
        // Grace reached: everything is on generation 2; the gateway stops writing so that the counts are exact.
        await progressUntil(started.handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
        await live.stop();
        await server.env.sleep('1d');
        // Mycelium's settings, not rekey, decide when generation 1 is gone: the run waits for the operator's word.
        const waiting = await progressUntil(started.handle, (p) => p.waiting?.step === 'retire', {
          withinMs: 60_000,
        });
        expect(waiting.waiting).toMatchObject({
          kind: 'application',
          instructions:
            'discard the old token_secret (generation 1) from Vault, the environment and MYC_OLD_TOKEN_SECRET',
          command: `rekey confirm ${started.handle.workflowId} --step retire --note "…"`,
        });
        await started.handle.executeUpdate(confirmStepUpdate, {
          args: [{ step: 'retire', note: 'old token_secret removed from Vault' }],
        });
        return resultWithin<RotationReport>(started.handle);
      });

      expect(live.errors).toEqual([]);
      expect(live.rewrites).toBeGreaterThan(0);
      expect(report.outcome).toBe('completed');
      // Tenants the gateway onboarded during the run are labelled 1 although wrapped by generation 2: those a pass
      // reached were relabelled; later ones keep their label, and do not need generation 1.
      const { counters } = report;
      expect(counters).toMatchObject({
        rewrapped: 300,
        alreadyOnTarget: 50,
        skipped: 20 + 30,
        failed: 0,
        casConflicts: 0,
      });
      expect(counters.relabelled).toBeGreaterThanOrEqual(15);
      expect(counters.relabelled).toBeLessThanOrEqual(15 + live.onboarded.length);
      expect(describeCounters(report)).toBe(
        `Tenants scanned: ${400 + counters.relabelled}  Migrated: 300  Already done: 50  Skipped: 50  Unreadable: 0  Relabelled: ${counters.relabelled}  CAS conflicts: 0`,
      );
      // With the new token_secret alone (the fixture's own AES-GCM, not rekey's).
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, [...onGen1, ...onGen2, ...mislabelled])).toEqual([]);
      expect(await checkWithOneKek(db.pool, kekOf(gen2), [1, 2], live.onboarded)).toEqual([]);
      expect(await checkWithOneKek(db.pool, kekOf(gen3), 3, onGen3)).toEqual([]);
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, withoutDek)).toEqual([]);
      expect(await myceliumShape(db.pool)).toEqual(shape);
      const registry = new KekRegistry(db.pool, 'mycelium');
      expect(await registry.get('1')).toMatchObject({ state: 'retired' });
      expect(await registry.get('2')).toMatchObject({ state: 'active' });
    } finally {
      await gateway.stop();
      await db.drop();
    }
  });

  it('a DEK that decrypts under neither generation is reported with its tenant, never written, and keeps generation 1 from retiring', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `mycelium-${randomUUID()}`;
    try {
      const tenants: SeededTenant[] = await seedMyceliumTenants(db.pool, 40, kekOf(gen1), 1);
      const broken = tenants[7]!.id;
      await db.pool.query(
        `UPDATE public.tenant SET encrypted_dek = 'v2:' || replace(encode(decode(substr(encrypted_dek, 4), 'base64') || '\\x00'::bytea, 'base64'), E'\\n', '') WHERE id = $1`,
        [broken],
      );
      const stored = () =>
        db.pool.query<{ encrypted_dek: string }>('SELECT encrypted_dek FROM public.tenant WHERE id = $1', [broken]);
      const before = (await stored()).rows[0];
      const running = await worker(db, taskQueue);
      const failure = await running
        .runUntil(async () => {
          const started = await startRotation(
            server.env.client,
            { target: 'mycelium', from: '1', to: '2', gracePeriod: '1d', maxPasses: 2 },
            { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
          );
          return resultWithin<RotationReport>(started.handle);
        })
        .catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(WorkflowFailedError);
      expect((failure as WorkflowFailedError).cause?.message).toMatch(
        new RegExp(
          `^1 row\\(s\\) still on '1' after 2 pass\\(es\\): ${broken}; unreadable: ${broken}: ciphertext is 33 bytes, expected 32`,
        ),
      );
      expect((await db.pool.query('SELECT encrypted_dek FROM public.tenant WHERE id = $1', [broken])).rows[0]).toEqual(
        before,
      );
      expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'decrypt_only' });
      expect(
        await checkWithOneKek(
          db.pool,
          kekOf(gen2),
          2,
          tenants.filter((t) => t.id !== broken),
        ),
      ).toEqual([]);
    } finally {
      await db.drop();
    }
  });
});
