import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { compileFormat } from '../../src/codec/sealed-format';
import { unpackTextColumn, type ByteColumn } from '../../src/crypto/columns';
import { MYCELIUM_FIELDS, MYCELIUM_PRESET } from '../../src/targets/presets';
import { FieldStore } from '../../src/store/field-store';
import { RowFieldsStore, rowGroups, type FieldsBatch } from '../../src/store/row-fields-store';
import { TargetStore } from '../../src/store/target-store';
import { createTestDatabase, migrateDatabase } from '../helpers/database';
import { createMyceliumSchema, encryptV1, kekOf, wrapDek } from '../helpers/mycelium';

/** Text values packed as the crypto threads give them back. */
function textColumn(values: (string | null)[]): ByteColumn {
  const parts = values.map((v) => (v === null ? null : Buffer.from(v, 'utf8')));
  const bytes = Buffer.concat(parts.flatMap((p) => (p === null ? [] : [p])));
  return { lengths: Int32Array.from(parts.map((p) => (p === null ? -1 : p.length))), bytes: new Uint8Array(bytes) };
}

/** A batch read by column, as rows: id, tenant, each field's legacy value, and the DEK read with it. */
function rowsOf(batch: FieldsBatch) {
  const ids = unpackTextColumn(batch.ids);
  const tenants = unpackTextColumn(batch.tenants);
  const values = batch.values.map(unpackTextColumn);
  const deks = unpackTextColumn(batch.dek.ids);
  const labels = unpackTextColumn(batch.dek.labels);
  const wrapped = unpackTextColumn((batch.dek.columns.columns.encrypted_dek as { column: ByteColumn }).column);
  return ids.map((id, i) => ({
    id,
    tenant: tenants[i],
    values: values.map((v) => v[i]),
    dek: deks[i] === null ? null : { id: deks[i], label: labels[i], wrapped: wrapped[i] },
  }));
}

describe('RowFieldsStore (the SQL of migrate-dek by row)', () => {
  it("a live writer that replaced one field of a row since it was read wins the whole row: neither field is written, each is counted as a CAS conflict of its own field, and the row's other fields are read again next time", async () => {
    const db = await createTestDatabase({ migrate: false });
    try {
      await createMyceliumSchema(db.pool);
      await migrateDatabase(db.pool);
      const kek = kekOf(randomUUID());
      const [kept, replaced, halfDone] = [randomUUID(), randomUUID(), randomUUID()].sort();
      // One tenant without a DEK yet: the batch says so (its DEK's id NULL), the others bring theirs.
      const deksOf = new Map([kept!, replaced!].map((id) => [id, wrapDek(kek, id, Buffer.alloc(32, 7))]));
      for (const id of [kept!, replaced!, halfDone!]) {
        await db.pool.query(`INSERT INTO public.tenant (id, name, meta, encrypted_dek) VALUES ($1, 't', $2, $3)`, [
          id,
          {
            telegram_bot_token: id === halfDone ? 'v2:already' : encryptV1(kek, `token of ${id}`),
            telegram_webhook_secret: encryptV1(kek, `hook of ${id}`),
            locale: 'pt-BR',
          },
          deksOf.get(id) ?? null,
        ]);
      }
      const deks = new TargetStore(db.pool, MYCELIUM_PRESET, compileFormat(MYCELIUM_PRESET.format));
      await deks.inspect();
      const client = await db.pool.connect();
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

      const batch = await rows.readBatch(client, { after: '', until: null }, 10, deks);
      const read = rowsOf(batch);
      client.release();
      expect(read.map((r) => [r.id, r.tenant, r.values.map((v) => v?.startsWith('v2:') ?? null)])).toEqual([
        [kept, kept, [false, false]],
        [replaced, replaced, [false, false]],
        [halfDone, halfDone, [null, false]],
      ]);
      // Each row's DEK comes in the same statement: its id, its generation and the wrapped DEK as stored.
      expect(read.map((r) => r.dek)).toEqual([
        { id: kept, label: '1', wrapped: deksOf.get(kept!) },
        { id: replaced, label: '1', wrapped: deksOf.get(replaced!) },
        null,
      ]);
      // The gateway writes a new webhook secret into one of them meanwhile.
      await db.pool.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_webhook_secret}', '"v2:by-the-gateway"') WHERE id = $1`,
        [replaced],
      );
      const lost = await rows.compareAndSwap(
        db.pool,
        batch,
        {
          indexes: Int32Array.from([0, 1, 2]),
          values: [0, 1].map((i) =>
            textColumn(read.map((r) => (r.values[i] === null ? null : `v2:migrated-${i}-${r.id}`))),
          ),
        },
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
      const again = await db.pool.connect();
      try {
        expect(rowsOf(await rows.readBatch(again, { after: '', until: null }, 10, deks))).toEqual([
          {
            id: replaced,
            tenant: replaced,
            values: [read[1]!.values[0], null],
            dek: { id: replaced, label: '1', wrapped: deksOf.get(replaced!) },
          },
        ]);
      } finally {
        again.release();
      }
    } finally {
      await db.drop();
    }
  });
});
