import { randomBytes, randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { Pool } from 'pg';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startMigration } from '../../src/client/migrations';
import { startRotation } from '../../src/client/rotations';
import { confirmStepUpdate, type MigrationReport, type RotationReport } from '../../src/workflows';
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
import { progressUntil, resultWithin, skipTime, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

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
          const started = await startRotation(
            server.env.client,
            { target: 'mycelium', from: '1', to: '2' },
            { taskQueue: `${taskQueue}-r0` },
          );
          return resultWithin(started.handle);
        })
        .catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(WorkflowFailedError);
      expect((refused as WorkflowFailedError).cause?.message).toMatch(
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
          { taskQueue },
        );
        expect(started.handle.workflowId).toBe('dek-migration-mycelium');
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
          { taskQueue: `${taskQueue}-2` },
        );
        return resultWithin<MigrationReport>(started.handle);
      });
      expect(again.totals).toMatchObject({ migrated: 0, deksProvisioned: 0, unreadable: 1 });
      expect(again.totals.alreadyCurrent).toBe(readable.length + seeded.v2.length);

      // The rotation is still refused for that one value, and goes on with the operator's reason.
      const rotated = await (
        await worker(db, `${taskQueue}-r1`, rotationEnv)
      ).runUntil(async () => {
        const blocked = await startRotation(
          server.env.client,
          { target: 'mycelium', from: '1', to: '2' },
          { taskQueue: `${taskQueue}-r1` },
        );
        await expect(resultWithin(blocked.handle)).rejects.toThrow(WorkflowFailedError);
        const started = await startRotation(
          server.env.client,
          {
            target: 'mycelium',
            from: '1',
            to: '2',
            gracePeriod: '1d',
            allowLegacyValues: `tenant ${broken.row}'s webhook secret was corrupt before the migration`,
          },
          { taskQueue: `${taskQueue}-r1` },
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
          { taskQueue },
        );
        expect(started.handle.workflowId).toMatch(/^dek-migration-mycelium-dry-run-\d+$/);
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
});
