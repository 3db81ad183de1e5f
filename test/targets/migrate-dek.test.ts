import { randomBytes, randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import type { Pool } from 'pg';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startMigration } from '../../src/client/migrations';
import { startRotation } from '../../src/client/rotations';
import { RunFailedError } from '../../src/errors';
import {
  abortMigrationUpdate,
  confirmStepUpdate,
  pauseMigrationUpdate,
  resumeMigrationUpdate,
  type MigrationReport,
  type RotationReport,
} from '../../src/workflows';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import {
  createMyceliumSchema,
  encryptField,
  encryptV1,
  gatewayReads,
  kekOf,
  myceliumShape,
  seedLegacyInventory,
  storedAt,
  SYSTEM_TENANT,
  unwrapDek,
  type InventoryValue,
} from '../helpers/mycelium';
import {
  createDevServerEnv,
  progressUntil,
  resultWithin,
  skipTime,
  useTimeSkippingEnv,
  within,
  workflowBundle,
} from '../helpers/temporal';
import { keyspaceIn } from '../helpers/keyspace';
import { migrationWorkflowIdOf } from '../../src/rotation/identity';

/** Every value reads back as its plaintext, the way the running gateway reads it, with `kek` alone. */
async function unreadBy(db: Pool, kek: Buffer, values: InventoryValue[]): Promise<string[]> {
  const problems: string[] = [];
  for (const value of values) {
    try {
      const read = await gatewayReads(db, kek, value);
      if (read !== value.plaintext) problems.push(`${value.row} ${value.field}: reads '${read}'`);
    } catch (err) {
      problems.push(`${value.row} ${value.field}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/** What the gateway does meanwhile: replaces Telegram webhook secrets with new v2 values under the tenant's DEK. */
function liveWriter(db: Pool, kek: Buffer, values: InventoryValue[]) {
  const targets = values.filter((v) => v.field === 'telegram_webhook_secret');
  let running = true;
  let writes = 0;
  const loop = (async () => {
    while (running) {
      const value = targets[writes % targets.length]!;
      const { rows } = await db.query<{ encrypted_dek: string | null }>(
        'SELECT encrypted_dek FROM public.tenant WHERE id = $1',
        [value.row],
      );
      const wrapped = rows[0]?.encrypted_dek;
      writes += 1;
      if (!wrapped) continue; // no DEK yet: the gateway would provision one; this stand-in leaves it
      const fresh = `rewritten-${writes}-${randomBytes(3).toString('hex')}`;
      await db.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_webhook_secret}', to_jsonb($2::text)) WHERE id = $1`,
        [value.row, encryptField(unwrapDek(kek, value.row, wrapped), value.row, value.field, fresh)],
      );
      value.plaintext = fresh;
    }
  })();
  return {
    get writes() {
      return writes;
    },
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

describe('rekey migrate-dek on a Mycelium-shaped database, through Temporal', () => {
  const server = useTimeSkippingEnv();
  const [gen1, gen2] = [randomUUID(), randomUUID()];

  function worker(db: TestDatabase, taskQueue: string, env: NodeJS.ProcessEnv): Promise<Worker> {
    return Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }),
    });
  }

  it('moves every v1 value in all four places to v2 under the DEK the gateway reads, provisions missing DEKs, reports the unreadable one; a rotation waits for it, then retires generation 1', async () => {
    const { db, shape } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `migrate-${randomUUID()}`;
    try {
      const seeded = await seedLegacyInventory(db.pool, kekOf(gen1), { tenants: 90, users: 40 });
      // One value that no KEK opens: reported, counted, never written.
      const broken = seeded.values.find(
        (v) => v.field === 'telegram_webhook_secret' && !seeded.withoutDek.includes(v.row),
      )!;
      const corrupt = encryptV1(randomBytes(32), 'lost');
      await db.pool.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_webhook_secret}', to_jsonb($2::text)) WHERE id = $1`,
        [broken.row, corrupt],
      );
      const readable = seeded.values.filter((v) => v !== broken);

      // Before the migration, a rotation is refused: the v1 values are pinned to generation 1.
      const rotationEnv = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };
      const refused = await (
        await worker(db, `${taskQueue}-r0`, rotationEnv)
      )
        .runUntil(async () => {
          await startRotation(
            server.env.client,
            { target: 'mycelium', from: '1', to: '2' },
            { taskQueue: `${taskQueue}-r0`, keyspace: await keyspaceIn(db.pool, 'mycelium') },
          );
        })
        .catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(RunFailedError);
      expect((refused as RunFailedError).message).toMatch(
        new RegExp(
          `^target 'mycelium' still holds ${seeded.values.length} legacy value\\(s\\) encrypted directly by its KEK \\(40 in public\\.user\\.mfa → totp\\.enabled\\.secret, .*Run \`rekey migrate-dek --target mycelium\` first`,
        ),
      );

      const writer = liveWriter(db.pool, kekOf(gen1), readable);
      const migrationEnv = { MYC_TOKEN_SECRET: gen1 };
      const report = await (
        await worker(db, taskQueue, migrationEnv)
      ).runUntil(async () => {
        const started = await startMigration(
          server.env.client,
          { target: 'mycelium', kekVersion: '1', batchSize: 7, parallelism: 2 },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        expect(started.handle.workflowId).toBe(
          migrationWorkflowIdOf('mycelium', await keyspaceIn(db.pool, 'mycelium')),
        );
        const done = await resultWithin<MigrationReport>(started.handle);
        await writer.stop();
        return done;
      });
      expect(writer.writes).toBeGreaterThan(0);

      expect(report.outcome).toBe('completed');
      expect(report.kekId).toBe('1');
      const { totals } = report;
      expect(totals.unreadable).toBe(1);
      expect(totals.deksProvisioned).toBe(seeded.withoutDek.length + 1); // and the system tenant's
      // The fields the writer leaves alone are counted exactly; the writer's own moves v1 values to v2 by itself.
      const field = (name: string) => report.fields.find((f) => f.name === name)!.counters;
      expect(field('totp_secret')).toMatchObject({ migrated: 40, alreadyCurrent: 0, unreadable: 0, casConflicts: 0 });
      expect(field('telegram_bot_token')).toMatchObject({
        migrated: seeded.values.filter((v) => v.field === 'telegram_bot_token').length,
        alreadyCurrent: seeded.v2.length,
        unreadable: 0,
      });
      const hooks = field('telegram_webhook_secret');
      expect(hooks.unreadable).toBe(1);
      expect(hooks.migrated + hooks.casConflicts + hooks.alreadyCurrent).toBeLessThanOrEqual(90 - 1);
      expect(report.legacyLeft).toBe(1);
      expect(report.failures).toEqual([
        {
          where: 'public.tenant.meta → telegram_webhook_secret',
          row: broken.row,
          field: 'telegram_webhook_secret',
          reason: expect.stringMatching(/^does not decrypt under any KEK held/) as unknown,
        },
      ]);
      const byGroup = Object.fromEntries(
        ['TOTP', 'Telegram', 'Webhook secrets'].map((group) => [
          group,
          report.fields.filter((f) => f.group === group).reduce((n, f) => n + f.counters.migrated, 0),
        ]),
      );
      expect(byGroup.TOTP).toBe(40);
      expect(byGroup['Webhook secrets']).toBe(2);

      // Read back by independent code, the way the running gateway reads: every value, under the DEK it uses.
      expect(await unreadBy(db.pool, kekOf(gen1), [...readable, ...seeded.v2])).toEqual([]);
      for (const value of readable) expect((await storedAt(db.pool, value))?.startsWith('v2:')).toBe(true);
      expect(await storedAt(db.pool, broken)).toBe(corrupt);
      const { rows: labels } = await db.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM public.tenant WHERE encrypted_dek IS NULL OR kek_version <> 1`,
      );
      expect(labels[0]!.n).toBe('0');
      expect(await myceliumShape(db.pool)).toEqual(shape);

      // Again: nothing left to do but the value nobody can read.
      const again = await (
        await worker(db, `${taskQueue}-2`, migrationEnv)
      ).runUntil(async () => {
        const started = await startMigration(
          server.env.client,
          { target: 'mycelium' },
          { taskQueue: `${taskQueue}-2`, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        return resultWithin<MigrationReport>(started.handle);
      });
      expect(again.totals).toMatchObject({ migrated: 0, deksProvisioned: 0, unreadable: 1 });
      expect(again.totals.alreadyCurrent).toBe(readable.length + seeded.v2.length);

      // The rotation is still refused for that one value, and goes on with the operator's reason.
      const rotated = await (
        await worker(db, `${taskQueue}-r1`, rotationEnv)
      ).runUntil(async () => {
        // Refused at once, by the validate step, with the kind of its error (refused: exit 5, HTTP 422).
        const blocked = await startRotation(
          server.env.client,
          { target: 'mycelium', from: '1', to: '2' },
          { taskQueue: `${taskQueue}-r1`, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        ).catch((err: unknown) => err);
        expect(blocked).toBeInstanceOf(RunFailedError);
        expect(blocked).toMatchObject({ kind: 'refused', message: expect.stringMatching(/legacy value/) as unknown });
        const started = await startRotation(
          server.env.client,
          {
            target: 'mycelium',
            from: '1',
            to: '2',
            gracePeriod: '1d',
            allowLegacyValues: `tenant ${broken.row}'s webhook secret was corrupt before the migration`,
          },
          { taskQueue: `${taskQueue}-r1`, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil(started.handle, (p) => p.phase === 'grace', { env: server.env });
        await skipTime(server.env, '1d');
        await progressUntil(started.handle, (p) => p.waiting?.step === 'retire', { env: server.env });
        await started.handle.executeUpdate(confirmStepUpdate, {
          args: [{ step: 'retire', note: 'generation 1 removed' }],
        });
        return resultWithin<RotationReport>(started.handle);
      });
      expect(rotated.outcome).toBe('completed');
      // Everything reads with generation 2 alone.
      expect(await unreadBy(db.pool, kekOf(gen2), [...readable, ...seeded.v2])).toEqual([]);
      const system = readable.find((v) => v.tenant === SYSTEM_TENANT)!;
      expect(await gatewayReads(db.pool, kekOf(gen2), system)).toBe(system.plaintext);
    } finally {
      await db.drop();
    }
  });

  it('a dry run lists the tenants with their v1 values, finds the unreadable one, and writes nothing', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `migrate-dry-${randomUUID()}`;
    try {
      const seeded = await seedLegacyInventory(db.pool, kekOf(gen1), { tenants: 12, users: 5 });
      const broken = seeded.values.find((v) => v.field === 'telegram_bot_token')!;
      await db.pool.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_bot_token}', to_jsonb($2::text)) WHERE id = $1`,
        [broken.row, encryptV1(randomBytes(32), 'lost')],
      );
      const snapshot = () =>
        db.pool.query(
          `SELECT 'tenant' AS t, id::text, meta::text AS v, encrypted_dek AS d FROM public.tenant
           UNION ALL SELECT 'user', id::text, mfa::text, NULL FROM public."user"
           UNION ALL SELECT 'webhook', id::text, secret::text, NULL FROM public.webhook ORDER BY 1, 2`,
        );
      const before = (await snapshot()).rows;
      const report = await (
        await worker(db, taskQueue, { MYC_TOKEN_SECRET: gen1 })
      ).runUntil(async () => {
        const started = await startMigration(
          server.env.client,
          { target: 'mycelium', kekVersion: '1', dryRun: true, batchSize: 4 },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        expect(started.handle.workflowId).toMatch(
          new RegExp(`^${migrationWorkflowIdOf('mycelium', await keyspaceIn(db.pool, 'mycelium'))}-dry-run-\\d+$`),
        );
        return resultWithin<MigrationReport>(started.handle);
      });
      expect(report.outcome).toBe('dry-run');
      expect(report.totals.migrated).toBe(seeded.values.length - 1);
      expect(report.totals.unreadable).toBe(1);
      expect(report.failures.map((f) => f.row)).toEqual([broken.row]);
      expect(report.legacyLeft).toBe(seeded.values.length);
      const listed = Object.fromEntries((report.byTenant ?? []).map((t) => [t.tenant, t.legacy]));
      expect(listed[SYSTEM_TENANT]).toBe(5 + 2);
      expect(listed[broken.row]).toBe(broken.row === seeded.v2[0]?.row ? 1 : 2);
      expect((await snapshot()).rows).toEqual(before);
      const { rows } = await db.pool.query<{ n: string }>('SELECT count(*) AS n FROM rekey.keks');
      expect(rows[0]!.n).toBe('0');
    } finally {
      await db.drop();
    }
  });

  it("--tenant-id moves the values under one tenant's DEK only, and refuses a tenant that is not there", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `migrate-tenant-${randomUUID()}`;
    const kek = kekOf(gen1);
    try {
      const seeded = await seedLegacyInventory(db.pool, kek, { tenants: 12, users: 8 });
      const one = seeded.withoutDek[1]!;
      const ofOne = seeded.values.filter((v) => v.tenant === one);
      const others = seeded.values.filter((v) => v.tenant !== one);
      expect(ofOne.length).toBe(2);
      const keyspace = await keyspaceIn(db.pool, 'mycelium');
      const run = (tenantId: string) =>
        startMigration(server.env.client, { target: 'mycelium', kekVersion: '1', tenantId }, { taskQueue, keyspace });
      await (
        await worker(db, taskQueue, { MYC_TOKEN_SECRET: gen1 })
      ).runUntil(async () => {
        // One tenant: its two Telegram values and its DEK, nothing of anybody else.
        const scoped = await resultWithin<MigrationReport>((await run(one)).handle);
        expect(scoped).toMatchObject({ outcome: 'completed', tenantId: one, tenants: 1, legacyLeft: 0 });
        expect(scoped.totals).toMatchObject({ migrated: 2, deksProvisioned: 1, unreadable: 0 });
        expect(await v2Flags(db.pool, ofOne)).toEqual([true, true]);
        expect(await countV2(db.pool, others)).toBe(0);
        expect(await unreadBy(db.pool, kek, seeded.values)).toEqual([]);
        const { rows } = await db.pool.query<{ id: string }>(
          'SELECT id::text FROM public.tenant WHERE encrypted_dek IS NOT NULL AND id = ANY($1::uuid[])',
          [seeded.withoutDek],
        );
        expect(rows.map((r) => r.id)).toEqual([one]);

        // The system tenant's: the TOTP and webhook secrets, which the gateway reads under the system DEK.
        const system = await resultWithin<MigrationReport>((await run(SYSTEM_TENANT)).handle);
        expect(system.totals.migrated).toBe(8 + 2);
        expect(await countV2(db.pool, others)).toBe(8 + 2);

        // A tenant that is not there, and an id that cannot be one, are refused before anything is written.
        // Refused as the migration starts (its plan step's verdict), with the kind of the error (invalid).
        const refusal = async (tenantId: string) => {
          const failed = await run(tenantId).catch((err: unknown) => err);
          expect(failed).toBeInstanceOf(RunFailedError);
          expect((failed as RunFailedError).kind).toBe('invalid');
          return (failed as RunFailedError).message;
        };
        const nobody = randomUUID();
        expect(await refusal(nobody)).toBe(
          `target 'mycelium' has no tenant '${nobody}' in public.tenant: check the tenant id`,
        );
        expect(await refusal('tenant-7')).toBe("'tenant-7' is not an id of public.tenant: its id column is uuid");
      });
      expect(await unreadBy(db.pool, kek, [...seeded.values, ...seeded.v2])).toEqual([]);
    } finally {
      await db.drop();
    }
  });
});

async function v2Flags(db: Pool, values: InventoryValue[]): Promise<boolean[]> {
  return (await Promise.all(values.map((v) => storedAt(db, v)))).map((stored) => stored?.startsWith('v2:') ?? false);
}

async function countV2(db: Pool, values: InventoryValue[]): Promise<number> {
  return (await v2Flags(db, values)).filter(Boolean).length;
}

// Pause and abort cancel running parts; on the time-skipping test server a cancellation that races an activity's
// completion leaves the run stuck (temporalio/sdk-java#2391, as in rotation-cancel.test.ts): these run on the dev server.
describe('rekey migrate-dek paused, resumed and aborted mid-run, on the dev server', () => {
  let env: TestWorkflowEnvironment;
  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });
  const gen1 = randomUUID();

  it('an abort leaves every value readable; a pause writes nothing until resume; every value is counted once', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `migrate-controls-${randomUUID()}`;
    const kek = kekOf(gen1);
    try {
      const seeded = await seedLegacyInventory(db.pool, kek, { tenants: 30, users: 20 });
      const all = seeded.values;
      // One value per batch, one batch per part: a run of many short activities, to stop part-way.
      const keyspace = await keyspaceIn(db.pool, 'mycelium');
      const run = (parallelism: number) =>
        startMigration(
          env.client,
          { target: 'mycelium', kekVersion: '1', batchSize: 1, parallelism, sliceTimeBudget: '1ms' },
          { taskQueue, keyspace },
        );
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: { MYC_TOKEN_SECRET: gen1 } }),
      });
      await worker.runUntil(async () => {
        // Abort part-way: what moved is v2, the rest still v1, and all of it reads.
        const aborting = (await run(1)).handle;
        await progressUntil<MigrationReport>(aborting, (p) => p.totals.migrated >= 2);
        await within(
          aborting.executeUpdate(abortMigrationUpdate, { args: ['change window closed'] }),
          30_000,
          () => 'abort',
        );
        const aborted = await resultWithin<MigrationReport>(aborting);
        expect(aborted).toMatchObject({ outcome: 'aborted', abortReason: 'change window closed' });
        const movedByAbortedRun = await countV2(db.pool, all);
        // Counted exactly: a part cancelled mid-batch-loop reports the batches it committed before it stopped.
        expect(aborted.totals.migrated).toBe(movedByAbortedRun);
        expect(movedByAbortedRun).toBeLessThan(all.length);
        expect(await unreadBy(db.pool, kek, all)).toEqual([]);

        // Pause part-way: once no part runs, nothing is scheduled and nothing is written; resume finishes.
        const pausing = (await run(2)).handle;
        expect(pausing.workflowId).toBe(migrationWorkflowIdOf('mycelium', keyspace));
        await progressUntil<MigrationReport>(pausing, (p) => p.totals.migrated >= 2);
        const paused = await within(pausing.executeUpdate(pauseMigrationUpdate), 30_000, () => 'pause');
        expect(paused.paused).toBe(true);
        await progressUntil<MigrationReport>(pausing, (p) => p.paused && p.partsRunning === 0);
        expect((await pausing.describe()).raw.pendingActivities ?? []).toEqual([]);
        const whilePaused = await countV2(db.pool, all);
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        expect(await countV2(db.pool, all)).toBe(whilePaused);
        expect(whilePaused).toBeLessThan(all.length);
        const resumed = await within(pausing.executeUpdate(resumeMigrationUpdate), 30_000, () => 'resume');
        expect(resumed.paused).toBe(false);
        const finished = await resultWithin<MigrationReport>(pausing);
        expect(finished.outcome).toBe('completed');
        // Exactly once: this run counts exactly what the aborted run left, whatever was cut off mid-part.
        expect(finished.totals.migrated).toBe(all.length - movedByAbortedRun);
        expect(finished.totals.casConflicts).toBe(0);
        expect(finished.legacyLeft).toBe(0);
      });
      expect(await countV2(db.pool, all)).toBe(all.length);
      expect(await unreadBy(db.pool, kek, [...all, ...seeded.v2])).toEqual([]);
    } finally {
      await db.drop();
    }
  });
});
