import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { compileFormat } from '../../src/codec/sealed-format';
import { unpackTextColumn, type ByteColumn } from '../../src/crypto/columns';
import { MYCELIUM_FIELDS, MYCELIUM_PRESET } from '../../src/targets/presets';
import { FieldStore } from '../../src/store/field-store';
import { RowFieldsStore, rowGroups, type FieldsBatch } from '../../src/store/row-fields-store';
import { TargetStore } from '../../src/store/target-store';
import { KekNotWritableError } from '../../src/errors';
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
  it("a DEK provisioned in the row's compare-and-swap goes in with the fields sealed under it, only where the row still holds no DEK and no field changed: a DEK or a field the application wrote between the read and the write is kept, the row counted as a conflict and read again with the application's DEK; nothing is written under a KEK no longer active", async () => {
    const db = await createTestDatabase({ migrate: false });
    try {
      await createMyceliumSchema(db.pool);
      await migrateDatabase(db.pool);
      await db.pool.query(
        `INSERT INTO rekey.keks (target, kek_id, state, fingerprint) VALUES ('mycelium', '2', 'active', 'kcv1:x')`,
      );
      const kek = kekOf(randomUUID());
      // Three tenants without a DEK: one left alone, one the gateway provisions itself meanwhile, one whose webhook
      // secret the gateway replaces meanwhile.
      const [alone, provisioned, replaced] = [randomUUID(), randomUUID(), randomUUID()].sort();
      for (const id of [alone!, provisioned!, replaced!]) {
        await db.pool.query(`INSERT INTO public.tenant (id, name, meta) VALUES ($1, 't', $2)`, [
          id,
          {
            telegram_bot_token: encryptV1(kek, `token of ${id}`),
            telegram_webhook_secret: encryptV1(kek, `hook of ${id}`),
          },
        ]);
      }
      const deks = new TargetStore(db.pool, MYCELIUM_PRESET, compileFormat(MYCELIUM_PRESET.format));
      await deks.inspect();
      const stores = MYCELIUM_FIELDS.map((field) => new FieldStore(db.pool, 'mycelium', field));
      for (const store of stores) await store.inspect();
      const telegram = rowGroups(stores).find((g) => stores[g[0]!]!.field.table.name === 'tenant')!;
      const rows = new RowFieldsStore(telegram.map((i) => stores[i]!));
      expect(rows.ownTenants(deks)).toBe(true);
      const keys = telegram.map((i) => RowFieldsStore.progressKey('run/part-0', i));
      await rows.createProgress(db.pool, keys, '', [0, 0]);
      const client = await db.pool.connect();
      const batch = await rows.readBatch(client, { after: '', until: null }, 10, deks);
      client.release();
      const read = rowsOf(batch);
      expect(read.map((r) => [r.id, r.dek])).toEqual([alone, provisioned, replaced].map((id) => [id, null]));

      const gatewayDek = wrapDek(kek, provisioned!, Buffer.alloc(32, 9));
      await db.pool.query(`UPDATE public.tenant SET encrypted_dek = $2, kek_version = 2 WHERE id = $1`, [
        provisioned,
        gatewayDek,
      ]);
      await db.pool.query(
        `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_webhook_secret}', '"v2:by-the-gateway"') WHERE id = $1`,
        [replaced],
      );
      const writes = {
        indexes: Int32Array.from([0, 1, 2]),
        values: [0, 1].map((i) => textColumn(read.map((r) => `v2:migrated-${i}-${r.id}`))),
      };
      const provision = { deks, kekId: '2', values: [read.map((r) => `v2:provisioned-for-${r.id}`)] };
      const progress = { keys, unreadable: [0, 0], cursor: replaced! };

      // Retired meanwhile: the statement writes nothing at all, and says why.
      await db.pool.query(`UPDATE rekey.keks SET state = 'retired' WHERE target = 'mycelium' AND kek_id = '2'`);
      await expect(rows.compareAndSwap(db.pool, batch, writes, progress, provision)).rejects.toBeInstanceOf(
        KekNotWritableError,
      );
      const untouched = await db.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM public.tenant WHERE meta::text LIKE '%migrated%' OR encrypted_dek LIKE '%provisioned%'`,
      );
      expect(untouched.rows[0]!.n).toBe(0);
      expect((await rows.readProgress(db.pool, keys))!.map((p) => [p.cursor, p.counters.migrated])).toEqual([
        ['', 0],
        ['', 0],
      ]);

      await db.pool.query(`UPDATE rekey.keks SET state = 'active' WHERE target = 'mycelium' AND kek_id = '2'`);
      const lost = await rows.compareAndSwap(db.pool, batch, writes, progress, provision);
      expect([...lost].sort()).toEqual([provisioned, replaced]);
      const { rows: stored } = await db.pool.query<{
        id: string;
        bot: string;
        hook: string;
        dek: string | null;
        generation: number;
      }>(
        `SELECT id::text, meta ->> 'telegram_bot_token' AS bot, meta ->> 'telegram_webhook_secret' AS hook,
                encrypted_dek AS dek, kek_version AS generation FROM public.tenant ORDER BY id`,
      );
      expect(stored).toEqual([
        {
          id: alone,
          bot: `v2:migrated-0-${alone}`,
          hook: `v2:migrated-1-${alone}`,
          dek: `v2:provisioned-for-${alone}`,
          generation: 2,
        },
        { id: provisioned, bot: read[1]!.values[0], hook: read[1]!.values[1], dek: gatewayDek, generation: 2 },
        { id: replaced, bot: read[2]!.values[0], hook: 'v2:by-the-gateway', dek: null, generation: 1 },
      ]);
      const after = await rows.readProgress(db.pool, keys);
      expect(
        after!.map((p) => [p.cursor, p.counters.migrated, p.counters.casConflicts, p.counters.deksProvisioned]),
      ).toEqual([
        [replaced, 1, 2, 1],
        [replaced, 1, 2, 0],
      ]);
      // Next time: the tenant the gateway provisioned is read again with the gateway's DEK, the other still without.
      const again = await db.pool.connect();
      try {
        expect(rowsOf(await rows.readBatch(again, { after: '', until: null }, 10, deks))).toEqual([
          {
            id: provisioned,
            tenant: provisioned,
            values: read[1]!.values,
            dek: { id: provisioned, label: '2', wrapped: gatewayDek },
          },
          { id: replaced, tenant: replaced, values: [read[2]!.values[0], null], dek: null },
        ]);
      } finally {
        again.release();
      }
    } finally {
      await db.drop();
    }
  });
});
