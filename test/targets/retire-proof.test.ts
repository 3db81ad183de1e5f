import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { KekRegistry } from '../../src/store/kek-registry';
import type { DestroyReport } from '../../src/activities/kek';
import type { DestroyProgress } from '../../src/rotation/destroy-progress';
import {
  confirmStepSignal,
  confirmStepUpdate,
  destroyProgressQuery,
  setGraceSignal,
  setGraceUpdate,
  type RotationReport,
} from '../../src/workflows';
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
import { runRekeyAt } from '../helpers/cli';
import { destroyIdIn, keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import {
  createDevServerEnv,
  progressUntil,
  queryUntil,
  resultWithin,
  useTimeSkippingEnv,
  workflowBundle,
} from '../helpers/temporal';

/** The `temporal` CLI of the toolchain, as an operator runs it; its standard output. */
async function temporalCli(...args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(inject('toolchain').temporalCli, args, { timeout: 30_000 });
  return stdout;
}

/**
 * Back along a workflow's chain of continue-as-new runs, from the last: what each run was started with (the state
 * the run before it carried, as the default converter's JSON) and how long its history is.
 */
async function runChain(
  client: Client,
  workflowId: string,
): Promise<{ proof?: { stage: string; part: number }; events: number }[]> {
  const chain: { proof?: { stage: string; part: number }; events: number }[] = [];
  let runId: string | undefined;
  do {
    const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
    const input = started?.input?.payloads?.[1]?.data;
    const carried = input
      ? (JSON.parse(Buffer.from(input).toString()) as { proof?: { stage: string; part: number } })
      : {};
    chain.push({ ...(carried.proof && { proof: carried.proof }), events: history.events?.length ?? 0 });
    runId = started?.continuedExecutionRunId || undefined;
  } while (runId !== undefined);
  return chain;
}

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
            { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
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

  it('the proof before retire runs in parts that continue as new with the history bounded, going on from the carried cursor: every row is proved and counted once', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    const taskQueue = `retire-proof-${randomUUID()}`;
    try {
      await seedMyceliumTenants(db.pool, 50, kekOf(gen1), 1);
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: activities(db),
      });
      // Few enough rows that a loaded machine gets through them in time (the parts' overhead, not the rows, grows with
      // the load), enough that a fast machine's parts still pass the bound of 20 events several times.
      const late = 2_000;
      const { report, chain } = await worker.runUntil(async () => {
        const { handle } = await startRotation(
          server.env.client,
          {
            target: 'mycelium',
            from: '1',
            to: '2',
            gracePeriod: '1h',
            // One row per batch: the late rows' proof takes at least two database round trips a row, so many parts of
            // 100 ms whatever this machine's speed, and their events pass the smallest bound (20) before the proof is done.
            batchSize: 1,
            sliceTimeBudget: '100ms',
            maxHistoryEvents: 20,
          },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
        await seedMyceliumTenants(db.pool, late, kekOf(gen2), 1);
        // Grace is ended by the signal (a signal is never lost to a continue-as-new, which the run may be making now).
        await handle.signal(setGraceSignal, { endNow: true });
        // 4,000 round trips at least, one row per batch: minutes on a loaded machine, so the waits are long; a stuck proof
        // still fails with the progress it stopped at.
        const asked = await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 240_000 });
        expect(asked.retireProof).toMatchObject({ stage: 'before-confirm', done: true, tried: late, relabelled: late });
        await handle.signal(confirmStepSignal, { step: 'retire', note: 'generation 1 removed' });
        // The latest run's result (the time-skipping server does not always answer a wait that follows the chain
        // from its first run).
        const done = await resultWithin<RotationReport>(
          server.env.client.workflow.getHandle(handle.workflowId),
          90_000,
        );
        const chain = await runChain(server.env.client, handle.workflowId);
        return { report: done, chain };
      });
      expect(report.outcome).toBe('completed');
      expect(report.counters.relabelled).toBe(late);
      // A run began in the middle of the proof before the confirmation, from the part and cursor the run before
      // carried; no run's history grew much past the bound.
      expect(chain.some((run) => run.proof?.stage === 'before-confirm' && run.proof.part > 0)).toBe(true);
      // Without the bound one run would hold every part (six events each, thousands here); with it each holds a few parts
      // and the run that ends the proof also waits for the operator and retires.
      expect(Math.max(...chain.map((run) => run.events))).toBeLessThan(300);
      expect(await labelled(db, 1)).toBe(0);
    } finally {
      await db.drop();
    }
  }, 300_000);

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

describe('destroy proves the rows still labelled with the retired KEK, on a Mycelium-shaped database', () => {
  const server = useTimeSkippingEnv();
  const [gen1, gen2] = [randomUUID(), randomUUID()];
  const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };

  /** Rotates generation 1 to 2 (the operator confirms the retirement) and returns the rotated tenants. */
  async function rotate(db: TestDatabase, taskQueue: string): Promise<RotationReport> {
    const { handle } = await startRotation(
      server.env.client,
      { target: 'mycelium', from: '1', to: '2', gracePeriod: '1d' },
      { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
    );
    await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
    await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
    await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 60_000 });
    await handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: 'generation 1 removed' }] });
    const report = await resultWithin<RotationReport>(handle, 60_000);
    expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'retired' });
    return report;
  }

  /** The restore window ends by the database's clock (the test cannot wait thirty days of it). */
  async function endWindow(db: TestDatabase): Promise<void> {
    await db.pool.query(
      `UPDATE rekey.keks SET restorable_until = now() - interval '1 second' WHERE target = 'mycelium' AND kek_id = '1'`,
    );
  }

  function worker(db: TestDatabase, taskQueue: string): Promise<Worker> {
    return Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }),
    });
  }

  it('Finding 11: after the window, DEKs the gateway provisioned since (under generation 2, labelled 1) are proved and relabelled, and generation 1 is destroyed', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    const taskQueue = `destroy-proof-${randomUUID()}`;
    try {
      const rotated = await seedMyceliumTenants(db.pool, 100, kekOf(gen1), 1);
      const running = await worker(db, taskQueue);
      const report = await running.runUntil(async () => {
        await rotate(db, taskQueue);
        // Onboarded after the retirement: the gateway wraps with its current token_secret and leaves the label 1.
        const provisionedSince = await seedMyceliumTenants(db.pool, 2_500, kekOf(gen2), 1);
        await endWindow(db);
        const destroyed = await resultWithin<DestroyReport>(
          server.env.client.workflow.getHandle(await destroyIdIn(db.pool, '1', 'mycelium')),
          90_000,
        );
        expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, [...rotated, ...provisionedSince])).toEqual([]);
        return destroyed;
      });
      expect(report).toMatchObject({ outcome: 'destroyed', relabelled: 2_500, operatorMustRemove: true });
      expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'destroyed' });
    } finally {
      await db.drop();
    }
  });
});

/** On the dev server (real time): the destruction's window and its next try are real, and nothing skips them. */
describe('a destruction refused for a row only the retired KEK opens, on a Mycelium-shaped database', () => {
  let server: TestWorkflowEnvironment;
  beforeAll(async () => {
    server = await createDevServerEnv();
  });
  afterAll(async () => {
    await server?.teardown();
  });
  const [gen1, gen2] = [randomUUID(), randomUUID()];
  const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };

  it('Finding 11: a row only the retired generation opens refuses the destruction, which says exactly what to do, keeps it restorable and waits to try again instead of failing; doing what it says saves the row', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    const taskQueue = `destroy-refused-${randomUUID()}`;
    const cli = (...args: string[]) =>
      runRekeyAt(server.address, taskQueue, args, {
        DATABASE_URL: db.url,
        ...env,
      });
    try {
      const rotated = await seedMyceliumTenants(db.pool, 100, kekOf(gen1), 1);
      const running = await Worker.create({
        connection: server.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }),
      });
      await running.runUntil(async () => {
        const { handle } = await startRotation(
          server.client,
          {
            target: 'mycelium',
            from: '1',
            to: '2',
            gracePeriod: '1d',
            restoreWindow: '10s',
            allowShortRestoreWindow: 'test: destroy on a dev server',
          },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
        await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
        await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 60_000 });
        await handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: 'generation 1 removed' }] });
        expect((await resultWithin<RotationReport>(handle)).outcome).toBe('completed');

        // Within the window: DEKs the gateway provisioned since (labelled 1, under generation 2), and one from a
        // gateway instance that still wrapped with the old token_secret.
        const provisionedSince = await seedMyceliumTenants(db.pool, 300, kekOf(gen2), 1);
        const [stranded] = await seedMyceliumTenants(db.pool, 1, kekOf(gen1), 1);
        const destruction = server.client.workflow.getHandle(await destroyIdIn(db.pool, '1', 'mycelium'));
        const refused = await queryUntil<DestroyProgress>(
          destruction,
          destroyProgressQuery.name,
          (p) => p.attempts > 0,
          { withinMs: 60_000 },
        );
        expect(refused).toMatchObject({
          state: 'refused',
          attempts: 1,
          refusals: 1,
          needed: 1,
          neededRows: [{ tenantId: stranded!.id }],
          relabelled: 300,
        });
        expect(refused.detail).toContain(`${stranded!.id} (it opens under none of '2')`);
        expect(refused.detail).toContain(
          'run `rekey keys restore 1 --target mycelium --reason "<why>"` before then, then `rekey rotate --target mycelium --from 1 --to 2`',
        );
        expect(refused.detail).toContain(`This step tries again at ${refused.nextAttemptAt}`);
        // The README's command for where it stands.
        const queried = await temporalCli(
          'workflow',
          'query',
          '--workflow-id',
          await destroyIdIn(db.pool, '1', 'mycelium'),
          '--name',
          'destroyProgress',
          '--address',
          server.address,
          '--output',
          'json',
        );
        expect(JSON.parse(queried)).toMatchObject({ queryResult: [{ state: 'refused', needed: 1 }] });
        // Not failed: it waits an hour for its next try, and generation 1 stays restorable until then.
        expect((await destruction.describe()).status.name).toBe('RUNNING');
        const { rows } = await db.pool.query<{ open: boolean }>(
          `SELECT restorable_until > now() + interval '55 minutes' AS open FROM rekey.keks
           WHERE target = 'mycelium' AND kek_id = '1'`,
        );
        expect(rows[0]).toEqual({ open: true });
        expect(await labelled(db, 1)).toBe(1);

        // What it says, as written: restore generation 1, then rotate from it again (the operator confirms).
        const restored = await cli('keys', 'restore', '1', '--target', 'mycelium', '--reason', 'a tenant needs it');
        expect(restored, restored.stderr).toMatchObject({ code: 0 });
        const started = await cli('rotate', '--target', 'mycelium', '--from', '1', '--to', '2', '--grace', '1s');
        expect(started, started.stderr).toMatchObject({ code: 0 });
        const again = server.client.workflow.getHandle(await rotationIdIn(db.pool, 'mycelium'));
        await progressUntil(again, (p) => p.waiting?.step === 'retire', { withinMs: 90_000 });
        await again.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: 'generation 1 removed' }] });
        expect((await resultWithin<RotationReport>(again, 90_000)).outcome).toBe('completed');
        expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, [...rotated, ...provisionedSince, stranded!])).toEqual(
          [],
        );
        expect(await new KekRegistry(db.pool, 'mycelium').get('1')).toMatchObject({ state: 'retired' });
        // The destruction goes on: at its next try it finds generation 1 retired again, and waits for the new window.
        expect((await destruction.describe()).status.name).toBe('RUNNING');
      });
    } finally {
      await db.drop();
    }
  });
});
