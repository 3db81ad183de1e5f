import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_FIELDS } from '../../src/targets/presets';
import { FieldStore } from '../../src/store/field-store';
import { createTestDatabase, migrateDatabase } from '../helpers/database';
import { createMyceliumSchema, encryptV1, kekOf } from '../helpers/mycelium';

describe('FieldStore (the SQL of migrate-dek)', () => {
  it('a live writer that replaced a value between read and write wins: the write is lost, counted as a CAS conflict, and the count commits with the batch', async () => {
    const db = await createTestDatabase({ migrate: false });
    try {
      await createMyceliumSchema(db.pool);
      await migrateDatabase(db.pool);
      const kek = kekOf(randomUUID());
      const [kept, replaced] = [randomUUID(), randomUUID()].sort();
      for (const id of [kept!, replaced!]) {
        await db.pool.query(`INSERT INTO public.tenant (id, name, meta) VALUES ($1, 't', $2)`, [
          id,
          { telegram_bot_token: encryptV1(kek, `token of ${id}`), locale: 'pt-BR' },
        ]);
      }
      const store = new FieldStore(
        db.pool,
        'mycelium',
        MYCELIUM_FIELDS.find((f) => f.name === 'telegram_bot_token')!,
      );
      await store.inspect();
      await store.createProgress(db.pool, 'run/part-0', '', 0);
      const read = await store.readLegacy(db.pool, { after: '', until: null }, 10);
      expect(read.map((r) => r.id)).toEqual([kept, replaced]);

      // The gateway writes a new v2 value into one of them meanwhile.
      await db.pool.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_bot_token}', '"v2:written-by-the-gateway"') WHERE id = $1`,
        [replaced],
      );
      const lost = await store.compareAndSwap(
        db.pool,
        read.map((r) => ({ id: r.id, old: r.value, value: `v2:migrated-${r.id}` })),
        { progressKey: 'run/part-0', cursor: replaced!, unreadable: 0 },
      );
      expect([...lost]).toEqual([replaced]);
      const { rows } = await db.pool.query<{ id: string; v: string; locale: string }>(
        `SELECT id::text, meta ->> 'telegram_bot_token' AS v, meta ->> 'locale' AS locale FROM public.tenant ORDER BY id`,
      );
      expect(rows).toEqual([
        { id: kept, v: `v2:migrated-${kept}`, locale: 'pt-BR' },
        { id: replaced, v: 'v2:written-by-the-gateway', locale: 'pt-BR' },
      ]);
      expect(await store.readProgress(db.pool, 'run/part-0')).toMatchObject({
        cursor: replaced,
        counters: { migrated: 1, casConflicts: 1, unreadable: 0 },
      });
      expect(await store.count()).toEqual({ legacy: 0, current: 2 });
    } finally {
      await db.drop();
    }
  });
});
