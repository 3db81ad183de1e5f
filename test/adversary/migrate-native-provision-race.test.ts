// Adversary9: migrate-dek's DEKs provisioned for a batch (736a0e3 hands them to the one native call by tenant) racing
// the gateway provisioning its own DEK for the same tenants. The gateway's lazy provisioning (seed-systems.md) is held
// in an open transaction while rekey's batch reaches those tenants; once rekey waits on it, it commits. Whatever rekey
// does then, every value it wrote must open the way the gateway reads it: under the DEK the tenant row holds (the
// gateway's), never under a DEK rekey made and lost. Fixtures and reads with node:crypto (test/helpers/mycelium.ts).
import { randomBytes, randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { Client } from 'pg';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import type { FieldSliceArgs, FieldSliceOutcome, MigrationPlan } from '../../src/activities/migrate';
import { inlineRowCrypto } from '../../src/crypto/row-crypto';
import { createApplicationDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import {
  createMyceliumSchema,
  gatewayReads,
  kekOf,
  myceliumShape,
  seedLegacyInventory,
  unwrapDek,
  wrapDek,
} from '../helpers/mycelium';

describe("migrate-dek's DEKs provisioned for a batch, racing the gateway's own", () => {
  it("seals every value under the DEK the gateway provisioned first, and counts no DEK of rekey's that lost", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const tokenSecret = randomUUID();
    const kek = kekOf(tokenSecret);
    const gateway = new Client({ connectionString: db.url });
    await gateway.connect();
    try {
      const seeded = await seedLegacyInventory(db.pool, kek, { tenants: 30, users: 2 });
      const activities = createActivities({
        db: db.pool,
        keys: testKeys(['v1']),
        env: { MYC_TOKEN_SECRET: tokenSecret },
        crypto: inlineRowCrypto,
      });
      const on = { target: 'mycelium', keyspace: (await keyspaceIn(db.pool, 'mycelium')).id };
      const plan: MigrationPlan = await new MockActivityEnvironment().run(
        (a: Parameters<typeof activities.planFieldMigration>[0]) => activities.planFieldMigration(a),
        { ...on, kekVersion: '1', slices: 1, dryRun: false },
      );
      const field = plan.fields.findIndex((f) => f.name === 'telegram_webhook_secret');
      // The gateway provisions a DEK for every tenant without one, lazily, as a first write would: not yet committed.
      const theirs = new Map(seeded.withoutDek.map((id) => [id, randomBytes(32)]));
      expect(theirs.size).toBeGreaterThan(5);
      await gateway.query('BEGIN');
      for (const [id, dek] of theirs) {
        const { rowCount } = await gateway.query(
          'UPDATE public.tenant SET encrypted_dek = $2 WHERE id = $1 AND encrypted_dek IS NULL',
          [id, wrapDek(kek, id, dek)],
        );
        expect(rowCount).toBe(1);
      }
      const { rows: pids } = await gateway.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      const args: FieldSliceArgs = {
        ...on,
        field,
        kekId: '1',
        range: { after: '', until: null },
        batchSize: 50,
        dryRun: false,
        timeBudgetMs: 120_000,
        progressKey: 'race/pass-1/field-2/slice-0/part-0',
        countExisting: true,
      };
      const running: Promise<FieldSliceOutcome> = new MockActivityEnvironment().run(
        (a: FieldSliceArgs) => activities.migrateFieldSlice(a),
        args,
      );
      running.catch(() => undefined);
      // rekey reaches the gateway's rows and waits on them.
      const waiting = await eventually(
        'rekey waits on the gateway provisioning',
        async () => {
          const { rows } = await db.pool.query<{ query: string }>(
            `SELECT query FROM pg_stat_activity WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))`,
            [pids[0]!.pid],
          );
          return rows[0]?.query;
        },
        { within: 120_000 },
      );
      // It waits in the provisioning of those tenants' DEKs (the statement that writes encrypted_dek).
      expect(waiting).toMatch(/SET[^]*"encrypted_dek"/);
      await gateway.query('COMMIT');
      const outcome = await running;
      const hooks = seeded.values.filter((v) => v.field === 'telegram_webhook_secret');
      expect(outcome.done).toBe(true);
      expect(outcome.counters).toMatchObject({ migrated: hooks.length, unreadable: 0 });
      // The gateway won every race it entered: rekey provisioned none of those tenants' DEKs.
      expect(outcome.counters.deksProvisioned).toBe(0);
      const { rows: stored } = await db.pool.query<{ id: string; encrypted_dek: string }>(
        'SELECT id, encrypted_dek FROM public.tenant WHERE id = ANY($1)',
        [[...theirs.keys()]],
      );
      for (const row of stored) expect(unwrapDek(kek, row.id, row.encrypted_dek)).toEqual(theirs.get(row.id));
      for (const value of hooks) expect(await gatewayReads(db.pool, kek, value)).toBe(value.plaintext);
    } finally {
      await gateway.end().catch(() => undefined);
      await db.drop();
    }
  });
});
