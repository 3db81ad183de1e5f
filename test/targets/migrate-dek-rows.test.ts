import { randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { createRowCrypto, inlineRowCrypto } from '../../src/crypto/row-crypto';
import { startMigration } from '../../src/client/migrations';
import type { MigrationReport } from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, gatewayReads, kekOf, myceliumShape, seedLegacyInventory } from '../helpers/mycelium';
import { resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

describe('rekey migrate-dek reads and writes each row once', () => {
  const server = useTimeSkippingEnv();

  it.each([
    ['on the crypto threads', createRowCrypto(2)],
    ["in the activity's thread (REKEY_CRYPTO_THREADS=0)", inlineRowCrypto],
  ])(
    'both Telegram fields of a tenant, and both secrets of a webhook, are moved by one write of their row, counted exactly once each; crypto %s',
    async (_, crypto) => {
      const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
      const tokenSecret = randomUUID();
      const kek = kekOf(tokenSecret);
      const taskQueue = `migrate-rows-${randomUUID()}`;
      try {
        const seeded = await seedLegacyInventory(db.pool, kek, { tenants: 30, users: 6 });
        // One webhook holding both secrets: two fields of one column, both v1.
        const [first, second] = seeded.values.filter((v) => v.table === 'webhook');
        await db.pool.query(
          `UPDATE public.webhook SET secret = secret || (SELECT secret FROM public.webhook WHERE id = $2) WHERE id = $1`,
          [first!.row, second!.row],
        );
        await db.pool.query('DELETE FROM public.webhook WHERE id = $1', [second!.row]);
        second!.row = first!.row;
        // Every write of a field-holding column, row by row, as PostgreSQL applies it.
        await db.pool.query(`
        CREATE TABLE public.field_writes (tbl text NOT NULL, id uuid NOT NULL);
        CREATE FUNCTION public.count_field_write() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN INSERT INTO public.field_writes VALUES (TG_TABLE_NAME, NEW.id); RETURN NEW; END $$;
        CREATE TRIGGER count_meta AFTER UPDATE OF meta ON public.tenant FOR EACH ROW
          WHEN (OLD.meta IS DISTINCT FROM NEW.meta) EXECUTE FUNCTION public.count_field_write();
        CREATE TRIGGER count_secret AFTER UPDATE OF secret ON public.webhook FOR EACH ROW
          WHEN (OLD.secret IS DISTINCT FROM NEW.secret) EXECUTE FUNCTION public.count_field_write();`);
        const worker = await Worker.create({
          connection: server.env.nativeConnection,
          taskQueue,
          workflowBundle: workflowBundle(),
          activities: createActivities({
            db: db.pool,
            keys: testKeys(['v1']),
            env: { MYC_TOKEN_SECRET: tokenSecret },
            crypto,
          }),
        });
        const report = await worker.runUntil(async () => {
          const { handle } = await startMigration(
            server.env.client,
            { target: 'mycelium', kekVersion: '1', batchSize: 4, parallelism: 2 },
            { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
          );
          return resultWithin<MigrationReport>(handle);
        });
        expect(report).toMatchObject({ outcome: 'completed', legacyLeft: 0 });
        expect(report.totals).toMatchObject({ migrated: seeded.values.length, unreadable: 0, casConflicts: 0 });
        const byField = (name: string) =>
          report.fields.filter((f) => f.name === name).reduce((n, f) => n + f.counters.migrated, 0);
        for (const name of ['telegram_bot_token', 'telegram_webhook_secret', 'http_secret', 'totp_secret']) {
          expect(byField(name), name).toBe(seeded.values.filter((v) => v.field === name).length);
        }

        const { rows } = await db.pool.query<{ tbl: string; id: string; writes: number }>(
          `SELECT tbl, id::text, count(*)::int AS writes FROM public.field_writes GROUP BY 1, 2`,
        );
        const writes = new Map(rows.map((r) => [`${r.tbl}/${r.id}`, r.writes]));
        const holders = [...new Set(seeded.values.filter((v) => v.table !== 'user').map((v) => `${v.table}/${v.row}`))];
        const bothLegacy = holders.filter(
          (holder) => seeded.values.filter((v) => `${v.table}/${v.row}` === holder).length === 2,
        );
        expect(bothLegacy.length).toBeGreaterThan(10);
        // One write of each row, whatever number of its fields were legacy.
        expect(holders.map((holder) => [holder, writes.get(holder)])).toEqual(holders.map((holder) => [holder, 1]));
        expect(rows.filter((r) => r.tbl !== 'user').length).toBe(holders.length);
        for (const value of seeded.values) expect(await gatewayReads(db.pool, kek, value)).toBe(value.plaintext);
      } finally {
        await db.drop();
        await crypto.close();
      }
    },
  );
});
