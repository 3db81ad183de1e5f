// A migration planned before parts of rows (MIGRATION_ROWS_PATCH) runs parts of one field: the migrateFieldSlice
// activity, now the rows' engine given a group of that one field. Run as Temporal runs it (a MockActivityEnvironment
// over real PostgreSQL), it must move that field only, and count it once, in the part's own progress row.
import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import type { FieldSliceArgs, FieldSliceOutcome, MigrationPlan } from '../../src/activities/migrate';
import { inlineRowCrypto } from '../../src/crypto/row-crypto';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, gatewayReads, kekOf, myceliumShape, seedLegacyInventory } from '../helpers/mycelium';

describe('a part of one field (runs planned before parts of rows)', () => {
  it("moves that field's v1 values only, provisions the DEKs they need, and counts each once in the part's own progress row", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const tokenSecret = randomUUID();
    const kek = kekOf(tokenSecret);
    try {
      const seeded = await seedLegacyInventory(db.pool, kek, { tenants: 30, users: 4 });
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
      const args: FieldSliceArgs = {
        ...on,
        field,
        kekId: '1',
        range: { after: '', until: null },
        batchSize: 7,
        dryRun: false,
        timeBudgetMs: 60_000,
        progressKey: 'old-run/pass-1/field-2/slice-0/part-0',
        countExisting: true,
      };
      const outcome: FieldSliceOutcome = await new MockActivityEnvironment().run(
        (a: FieldSliceArgs) => activities.migrateFieldSlice(a),
        args,
      );
      const hooks = seeded.values.filter((v) => v.field === 'telegram_webhook_secret');
      expect(outcome.done).toBe(true);
      expect(outcome.counters).toMatchObject({ migrated: hooks.length, unreadable: 0, casConflicts: 0 });
      // Every tenant without a DEK holds a v1 webhook secret: each got one, counted once.
      expect(outcome.counters.deksProvisioned).toBe(seeded.withoutDek.length);
      const { rows } = await db.pool.query<{ progress_key: string; migrated: string; done: boolean }>(
        'SELECT progress_key, migrated, done FROM rekey.field_migration_progress',
      );
      expect(rows).toEqual([{ progress_key: args.progressKey, migrated: String(hooks.length), done: true }]);
      for (const value of hooks) expect(await gatewayReads(db.pool, kek, value)).toBe(value.plaintext);
      // The other Telegram field is left as it was: still v1.
      const { rows: bots } = await db.pool.query<{ bot: string }>(
        `SELECT meta ->> 'telegram_bot_token' AS bot FROM public.tenant WHERE meta ? 'telegram_bot_token'`,
      );
      const stillV1 = seeded.values.filter((v) => v.field === 'telegram_bot_token').length;
      expect(bots.filter((b) => !b.bot.startsWith('v2:')).length).toBe(stillV1);
    } finally {
      await db.drop();
    }
  });
});
