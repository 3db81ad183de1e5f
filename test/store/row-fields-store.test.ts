import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_FIELDS } from '../../src/targets/presets';
import { FieldStore } from '../../src/store/field-store';
import { RowFieldsStore, rowGroups } from '../../src/store/row-fields-store';
import { createTestDatabase, migrateDatabase } from '../helpers/database';
import { createMyceliumSchema, encryptV1, kekOf } from '../helpers/mycelium';

describe('RowFieldsStore (the SQL of migrate-dek by row)', () => {
  it("a live writer that replaced one field of a row since it was read wins the whole row: neither field is written, each is counted as a CAS conflict of its own field, and the row's other fields are read again next time", async () => {
    const db = await createTestDatabase({ migrate: false });
    try {
      await createMyceliumSchema(db.pool);
      await migrateDatabase(db.pool);
      const kek = kekOf(randomUUID());
      const [kept, replaced, halfDone] = [randomUUID(), randomUUID(), randomUUID()].sort();
      for (const id of [kept!, replaced!, halfDone!]) {
        await db.pool.query(`INSERT INTO public.tenant (id, name, meta) VALUES ($1, 't', $2)`, [
          id,
          {
            telegram_bot_token: id === halfDone ? 'v2:already' : encryptV1(kek, `token of ${id}`),
            telegram_webhook_secret: encryptV1(kek, `hook of ${id}`),
            locale: 'pt-BR',
          },
        ]);
      }
      const stores = MYCELIUM_FIELDS.map((field) => new FieldStore(db.pool, 'mycelium', field));
      for (const store of stores) await store.inspect();
      // The two Telegram fields share tenant.meta, its id and its tenant: one group; TOTP and webhooks are others.
      const groups = rowGroups(stores);
      const telegram = groups.find((g) => stores[g[0]!]!.field.table.name === 'tenant')!;
      expect(telegram.map((i) => stores[i]!.field.name)).toEqual(['telegram_bot_token', 'telegram_webhook_secret']);
      expect(groups.map((g) => g.length).sort()).toEqual([1, 2, 2]);
      const rows = new RowFieldsStore(telegram.map((i) => stores[i]!));
      const keys = telegram.map((i) => RowFieldsStore.progressKey('run/part-0', i));
      await rows.createProgress(db.pool, keys, '', [0, 0]);

      const read = await rows.readLegacy(db.pool, { after: '', until: null }, 10);
      expect(read.map((r) => [r.id, r.values.map((v) => v?.startsWith('v2:') ?? null)])).toEqual([
        [kept, [false, false]],
        [replaced, [false, false]],
        [halfDone, [null, false]],
      ]);
      // The gateway writes a new webhook secret into one of them meanwhile.
      await db.pool.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_webhook_secret}', '"v2:by-the-gateway"') WHERE id = $1`,
        [replaced],
      );
      const lost = await rows.compareAndSwap(
        db.pool,
        read.map((r) => ({
          id: r.id,
          old: r.values,
          value: r.values.map((v, i) => (v === null ? null : `v2:migrated-${i}-${r.id}`)),
        })),
        { keys, unreadable: [0, 0], cursor: halfDone! },
      );
      expect([...lost]).toEqual([replaced]);
      const { rows: stored } = await db.pool.query<{ id: string; bot: string; hook: string; locale: string }>(
        `SELECT id::text, meta ->> 'telegram_bot_token' AS bot, meta ->> 'telegram_webhook_secret' AS hook,
                meta ->> 'locale' AS locale FROM public.tenant ORDER BY id`,
      );
      expect(stored).toEqual([
        { id: kept, bot: `v2:migrated-0-${kept}`, hook: `v2:migrated-1-${kept}`, locale: 'pt-BR' },
        { id: replaced, bot: read[1]!.values[0], hook: 'v2:by-the-gateway', locale: 'pt-BR' },
        { id: halfDone, bot: 'v2:already', hook: `v2:migrated-1-${halfDone}`, locale: 'pt-BR' },
      ]);
      const progress = await rows.readProgress(db.pool, keys);
      expect(progress!.map((p) => [p.cursor, p.counters.migrated, p.counters.casConflicts])).toEqual([
        [halfDone, 1, 1],
        [halfDone, 2, 1],
      ]);
      // Next time, the row the writer won is read again for the field it left legacy, and only that one.
      const again = await rows.readLegacy(db.pool, { after: '', until: null }, 10);
      expect(again).toEqual([{ id: replaced, tenant: replaced, values: [read[1]!.values[0], null] }]);
    } finally {
      await db.drop();
    }
  });
});
