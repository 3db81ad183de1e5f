import { randomUUID } from 'node:crypto';
import type { Pool, QueryConfig } from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { compileFormat } from '../../src/codec/sealed-format';
import { unpackTextColumn, type ByteColumn } from '../../src/crypto/columns';
import { integerArray, packedArray, textArray, uuidArray } from '../../src/store/binary-arrays';
import { literal } from '../../src/store/copy-out';
import { KekRegistry } from '../../src/store/kek-registry';
import { batchId, TargetStore } from '../../src/store/target-store';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { MYCELIUM_PRESET, REKEY_PRESET } from '../../src/targets/presets';
import { KekNotWritableError } from '../../src/errors';
import { useTestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { fingerprintIn } from '../helpers/store-keys';
import { createMyceliumSchema, kekOf, seedMyceliumTenants } from '../helpers/mycelium';

const keys = testKeys(['v1', 'v2'], 'v1');

/** Ids that text escaping gets wrong when it is wrong: quotes, backslashes, array punctuation, other scripts. */
const AWKWARD_IDS = [
  `tenant-'quoted'`,
  'tenant-"double"',
  'tenant-back\\slash\\\\',
  'tenant-{braces},comma',
  'tenant-NULL',
  'tenant- spaced ',
  'tenant-Ünïcödé-日本-🔑',
];

async function store(db: { pool: Pool }): Promise<TargetStore> {
  const s = new TargetStore(db.pool, REKEY_PRESET, compileFormat(REKEY_PRESET.format));
  await s.inspect();
  return s;
}

/** One row per awkward id on `v1`, each wrapped DEK holding every byte value, each version beyond 2^53. */
async function seedAwkward(pool: Pool): Promise<void> {
  await new KekRegistry(pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
  for (const [i, id] of AWKWARD_IDS.entries()) {
    await pool.query(
      'INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek, version) VALUES ($1, $2, $3, $4)',
      [id, 'v1', Buffer.concat([EVERY_BYTE, Buffer.from([i])]), 9_007_199_254_740_993n + BigInt(i)],
    );
  }
}

const EVERY_BYTE = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

/** Values packed as a ByteColumn: each one's length (-1 for null) and the bytes one after another. */
function pack(values: (Buffer | null)[]): ByteColumn {
  return {
    lengths: Int32Array.from(values, (v) => (v === null ? -1 : v.length)),
    bytes: new Uint8Array(Buffer.concat(values.filter((v): v is Buffer => v !== null))),
  };
}

describe('binary transfer between the rewrap engine and PostgreSQL', () => {
  const db = useTestDatabase();
  beforeAll(() => seedAwkward(db.pool));

  it('a binary text[] parameter arrives as the strings it was built from, NULLs and empty strings included', async () => {
    const values = [...AWKWARD_IDS, '', null, 'x'.repeat(10_000)];
    const { rows } = await db.pool.query<{ v: (string | null)[] }>('SELECT $1::text[] AS v', [textArray(values)]);
    expect(rows[0]!.v).toEqual(values);
    const empty = await db.pool.query<{ n: number }>('SELECT cardinality($1::text[]) AS n', [textArray([])]);
    expect(empty.rows[0]!.n).toBe(0);
  });

  it('a binary integer array arrives exactly, for every integer width and beyond 2^53, and refuses what is not one', async () => {
    const wide = ['0', '1', '-1', '9007199254740993', '-9223372036854775808', '9223372036854775807'];
    const { rows } = await db.pool.query<{ v: string }>('SELECT x::text AS v FROM unnest($1::int8[]) x', [
      integerArray(wide, 'int8'),
    ]);
    expect(rows.map((r) => r.v)).toEqual(wide);
    for (const [type, values] of [
      ['int4', ['2147483647', '-2147483648', '7']],
      ['int2', ['32767', '-32768', '7']],
    ] as const) {
      const result = await db.pool.query<{ v: string }>(`SELECT x::text AS v FROM unnest($1::${type}[]) x`, [
        integerArray(values, type),
      ]);
      expect(result.rows.map((r) => r.v)).toEqual(values);
    }
    expect(() => integerArray(['1.5'], 'int8')).toThrow(RangeError);
    expect(() => integerArray(['abc'], 'int8')).toThrow(RangeError);
    expect(() => integerArray(['2147483648'], 'int4')).toThrow(RangeError);
  });

  it('an array parameter from packed values arrives exactly: text from its UTF-8 bytes, integers from their big-endian bytes, only the elements asked for', async () => {
    const texts = [...AWKWARD_IDS, '', null];
    const packedTexts = pack(texts.map((t) => (t === null ? null : Buffer.from(t, 'utf8'))));
    const which = [0, 2, 3, 6, 7, 8];
    const { rows } = await db.pool.query<{ v: (string | null)[] }>('SELECT $1::text[] AS v', [
      packedArray(packedTexts, which, 'text'),
    ]);
    expect(rows[0]!.v).toEqual(which.map((i) => texts[i]));
    const wide = [0n, -1n, 9_007_199_254_740_993n, -9_223_372_036_854_775_808n, 9_223_372_036_854_775_807n];
    const packedWide = pack(
      wide.map((v) => {
        const b = Buffer.alloc(8);
        b.writeBigInt64BE(v);
        return b;
      }),
    );
    const result = await db.pool.query<{ v: string }>('SELECT x::text AS v FROM unnest($1::int8[]) x', [
      packedArray(packedWide, [4, 0, 2], 'int8'),
    ]);
    expect(result.rows.map((r) => r.v)).toEqual([wide[4], wide[0], wide[2]].map(String));
    expect(() => packedArray(packedWide, [0], 'int4')).toThrow(RangeError);
    expect(() => packedArray(pack([null]), [0], 'int8')).toThrow(RangeError);
  });

  it('a binary uuid[] parameter arrives as the UUIDs it was built from, from strings or packed text, and refuses what PostgreSQL would not have written', async () => {
    const uuids = [
      randomUUID(),
      '00000000-0000-0000-0000-000000000000',
      'ffffffff-ffff-ffff-ffff-ffffffffffff',
      randomUUID(),
    ];
    const { rows } = await db.pool.query<{ v: string }>('SELECT x::text AS v FROM unnest($1::uuid[]) x', [
      uuidArray(uuids),
    ]);
    expect(rows.map((r) => r.v)).toEqual(uuids);
    const packed = pack(uuids.map((u) => Buffer.from(u, 'utf8')));
    const picked = await db.pool.query<{ v: string }>('SELECT x::text AS v FROM unnest($1::uuid[]) x', [
      packedArray(packed, [3, 1], 'uuid'),
    ]);
    expect(picked.rows.map((r) => r.v)).toEqual([uuids[3], uuids[1]]);
    const empty = await db.pool.query<{ n: number }>('SELECT cardinality($1::uuid[]) AS n', [uuidArray([])]);
    expect(empty.rows[0]!.n).toBe(0);
    const upper = uuids[0]!.toUpperCase();
    const fromUpper = await db.pool.query<{ v: string }>('SELECT ($1::uuid[])[1]::text AS v', [uuidArray([upper])]);
    expect(fromUpper.rows[0]!.v).toBe(uuids[0]);
    for (const bad of [
      uuids[0]!.replace(/-/g, ''),
      `{${uuids[0]}}`,
      `${uuids[0]!.slice(0, 35)}g`,
      `${uuids[0]!.slice(0, 8)}_${uuids[0]!.slice(9)}`,
      `${uuids[0]!.slice(0, 35)}š`,
      '',
    ]) {
      expect(() => uuidArray([bad]), bad).toThrow(RangeError);
      expect(() => packedArray(pack([Buffer.from(bad, 'utf8')]), [0], 'uuid'), bad).toThrow(RangeError);
    }
    expect(() => packedArray(pack([null]), [0], 'uuid')).toThrow(RangeError);
  });

  it('a rewrap read by column holds every byte of a bytea, every character of an id and every version as the table does', async () => {
    const expected = await db.pool.query<{ tenant_id: string; wrapped_dek: Buffer; version: string }>(
      `SELECT tenant_id, wrapped_dek, version::text FROM rekey.tenant_deks ORDER BY tenant_id`,
    );
    const batch = await (await store(db)).readColumns(db.pool, 'v1', { after: '', until: null }, 100);
    expect(batch.count).toBe(AWKWARD_IDS.length);
    expect(unpackTextColumn(batch.ids)).toEqual(expected.rows.map((r) => r.tenant_id));
    expect(expected.rows.map((_, i) => batchId(batch, i))).toEqual(expected.rows.map((r) => r.tenant_id));
    // The codec reads the id too (its associated data): the same packed column.
    expect(batch.columns.columns.tenant_id).toEqual({ kind: 'text', column: batch.ids });
    const dek = batch.columns.columns.wrapped_dek!;
    expect(dek.kind).toBe('bytes');
    let offset = 0;
    const tokens = Buffer.from(batch.tokens!.bytes);
    expected.rows.forEach((row, i) => {
      const { lengths, bytes } = (dek as { column: ByteColumn }).column;
      expect(Buffer.from(bytes.subarray(offset, offset + lengths[i]!)).equals(row.wrapped_dek)).toBe(true);
      offset += lengths[i]!;
      expect(batch.tokens!.lengths[i]).toBe(8);
      expect(tokens.readBigInt64BE(i * 8).toString()).toBe(row.version);
    });
  });

  it("a rewrap read returns every byte of a bytea and every character of an id, which node-postgres' binary row mode does not", async () => {
    const everyByte = EVERY_BYTE;
    const expected = await db.pool.query<{ tenant_id: string; wrapped_dek: Buffer; version: string }>(
      `SELECT tenant_id, wrapped_dek, version::text FROM rekey.tenant_deks ORDER BY tenant_id`,
    );

    const rows = await (
      await store(db)
    ).readBatch(db.pool, { kind: 'label', kekId: 'v1' }, { after: '', until: null }, 100);

    expect(rows.map((r) => [r.$id, r.tenant_id, r.$label, r.$token, r.wrapped_dek])).toEqual(
      expected.rows.map((r) => [r.tenant_id, r.tenant_id, 'v1', r.version, r.wrapped_dek]),
    );
    // The reason the engine reads with COPY: in binary mode node-postgres decodes each field as UTF-8 before any type
    // parser sees it, so the bytes from 0x80 up are lost.
    const binaryMode = { text: 'SELECT $1::bytea AS b', values: [everyByte], binary: true }; // not in @types/pg
    const binary = await db.pool.query<{ b: string | Buffer }>(binaryMode as QueryConfig);
    expect(Buffer.from(binary.rows[0]!.b).equals(everyByte)).toBe(false);
  });

  it('a rewrap read bounds its range by ids written into the query as literals, whatever they hold', async () => {
    const s = await store(db);
    const sorted = (
      await db.pool.query<{ tenant_id: string }>('SELECT tenant_id FROM rekey.tenant_deks ORDER BY tenant_id')
    ).rows.map((r) => r.tenant_id);
    for (let i = 0; i < sorted.length; i++) {
      const after = i === 0 ? '' : sorted[i - 1]!;
      const until = sorted[Math.min(i + 2, sorted.length - 1)]!;
      const rows = await s.readBatch(db.pool, { kind: 'label', kekId: 'v1' }, { after, until }, 100);
      expect(rows.map((r) => r.$id)).toEqual(sorted.slice(i, Math.min(i + 3, sorted.length)));
      const one = await s.readBatch(
        db.pool,
        { kind: 'label', kekId: 'v1' },
        { after: '', until: null },
        100,
        sorted[i],
      );
      expect(one.map((r) => r.$id)).toEqual([sorted[i]]);
    }
    expect(() => literal('tenant\0')).toThrow(RangeError);
  });
});

describe('the batch compare-and-swap', () => {
  const db = useTestDatabase();
  beforeAll(() => seedAwkward(db.pool));

  it('writes the rows still as read, returns the ones another writer changed, and never writes a row outside the first and last id it was given', async () => {
    const s = await store(db);
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.register('v2', await fingerprintIn(keys, 'v2'));
    await registry.promote('v1', 'v2');
    const rows = await s.readBatch(db.pool, { kind: 'label', kekId: 'v1' }, { after: '', until: null }, 100);
    expect(rows.length).toBe(AWKWARD_IDS.length);
    // Another writer changes the second row after it was read.
    await db.pool.query('UPDATE rekey.tenant_deks SET version = version + 1 WHERE tenant_id = $1', [rows[1]!.$id]);
    const value = (i: number) => Buffer.from([0x01, i]);
    // The last row is given second: out of the id order the store read them in, past the last id given.
    const order = [0, rows.length - 1, ...[...rows.keys()].slice(1, -1)];
    const writes = order.map((i) => ({ id: rows[i]!.$id, row: rows[i]!, values: [value(i)], relabel: false }));

    const outcome = await s.compareAndSwap(db.pool, 'v1', 'v2', writes, ['active']);

    const last = rows[rows.length - 1]!.$id;
    expect([...outcome.lost].sort()).toEqual([rows[1]!.$id, last].sort());
    expect(outcome.written).toBe(rows.length - 2);
    const after = await db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
      'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
    );
    for (const [i, row] of after.rows.entries()) {
      const written = row.tenant_id !== rows[1]!.$id && row.tenant_id !== last;
      expect([row.tenant_id, row.kek_id, written && row.wrapped_dek.equals(value(i))]).toEqual([
        rows[i]!.$id,
        written ? 'v2' : 'v1',
        written,
      ]);
    }
  });
});

describe('the batch compare-and-swap built from columns', () => {
  const db = useTestDatabase();
  beforeAll(() => seedAwkward(db.pool));

  it('writes every byte value into the rows still as read, counts the relabelled ones with their progress in the same statement, and returns the ones another writer changed', async () => {
    const s = await store(db);
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.register('v2', await fingerprintIn(keys, 'v2'));
    await registry.promote('v1', 'v2');
    await db.pool.query(
      `INSERT INTO rekey.rewrap_progress (target, progress_key, cursor) VALUES ('rekey', 'columns/slice-0', '')`,
    );
    const batch = await s.readColumns(db.pool, 'v1', { after: '', until: null }, 100);
    const ids = unpackTextColumn(batch.ids) as string[];
    // Another writer changes the third row after it was read; the first row is left out (it did not decrypt).
    await db.pool.query('UPDATE rekey.tenant_deks SET version = version + 1 WHERE tenant_id = $1', [ids[2]]);
    const indexes = Int32Array.from(ids.keys()).slice(1);
    // Values of two lengths (the statement slices them by offsets), holding every byte value.
    const value = (i: number) => Buffer.concat([EVERY_BYTE.subarray(i), Buffer.from([i])]);
    const relabel = Uint8Array.from(indexes, (i) => (i === 3 ? 1 : 0));
    const outcome = await s.compareAndSwapColumns(
      db.pool,
      'v1',
      'v2',
      batch,
      { indexes, relabel, values: [{ kind: 'bytes', column: pack(Array.from(indexes, value)) }] },
      ['active'],
      { progressKey: 'columns/slice-0', cursor: ids[ids.length - 1]!, failed: 1 },
    );

    expect([...outcome.lost]).toEqual([ids[2]]);
    expect(outcome).toMatchObject({ written: ids.length - 2, relabelled: 1 });
    const after = await db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
      'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
    );
    expect(after.rows.map((r) => r.tenant_id)).toEqual(ids);
    for (const [i, row] of after.rows.entries()) {
      const written = i !== 0 && i !== 2;
      expect([row.kek_id, written && row.wrapped_dek.equals(value(i))]).toEqual([written ? 'v2' : 'v1', written]);
    }
    const progress = await db.pool.query(
      `SELECT cursor, rewrapped::int, relabelled::int, cas_conflicts::int, failed::int FROM rekey.rewrap_progress
       WHERE progress_key = 'columns/slice-0'`,
    );
    expect(progress.rows[0]).toEqual({
      cursor: ids[ids.length - 1],
      rewrapped: ids.length - 3,
      relabelled: 1,
      cas_conflicts: 1,
      failed: 1,
    });
  });
});

describe("the compare-and-swap of a table keyed by uuid (Mycelium's tenant), its ids sent as binary uuids", () => {
  const db = useTestDatabase();
  const text = (values: string[]) => ({
    kind: 'text' as const,
    column: pack(values.map((v) => Buffer.from(v, 'utf8'))),
  });

  async function myceliumStore(): Promise<{ s: TargetStore; registry: KekRegistry }> {
    await createMyceliumSchema(db.pool);
    await seedMyceliumTenants(db.pool, 8, kekOf(randomUUID()), 1);
    const registry = new KekRegistry(db.pool, 'mycelium');
    await registry.seedActive('1', 'fingerprint-1');
    await registry.register('2', 'fingerprint-2');
    const s = new TargetStore(db.pool, MYCELIUM_PRESET, compileFormat(MYCELIUM_PRESET.format));
    await s.inspect();
    return { s, registry };
  }

  const stored = async () =>
    (
      await db.pool.query<{ id: string; encrypted_dek: string; kek_version: number }>(
        'SELECT id::text, encrypted_dek, kek_version FROM public.tenant ORDER BY id',
      )
    ).rows;

  it('refuses to write while the registry does not let the new generation wrap, writes the rows whose stored value is as read (by column and by row), counts a relabel by its uuid, and returns the ones another writer changed as the read spelled them', async () => {
    const { s, registry } = await myceliumStore();
    const before = await stored();
    const ids = before.map((r) => r.id);
    const half = { after: '', until: ids[3]! };
    const batch = await s.readColumns(db.pool, '1', half, 100);
    expect(unpackTextColumn(batch.ids)).toEqual(ids.slice(0, 4));
    const indexes = Int32Array.from([0, 1, 2, 3]);
    const news = (from: number) => [0, 1, 2, 3].map((i) => `v2:new-${from + i}`);
    const byColumn = () =>
      s.compareAndSwapColumns(
        db.pool,
        '1',
        '2',
        batch,
        // The last row's value was already under generation 2: a relabel, counted as one.
        { indexes, relabel: Uint8Array.from([0, 0, 0, 1]), values: [text(news(0))] },
        ['active'],
      );

    // Generation 2 is only provisioned: nothing is written.
    await expect(byColumn()).rejects.toBeInstanceOf(KekNotWritableError);
    expect(await stored()).toEqual(before);

    await registry.promote('1', '2');
    // The application rewrites the second row's DEK after the read, and renames the third tenant (its DEK as read).
    await db.pool.query(`UPDATE public.tenant SET encrypted_dek = 'v2:the-application' WHERE id = $1`, [ids[1]]);
    await db.pool.query(`UPDATE public.tenant SET name = 'renamed' WHERE id = $1`, [ids[2]]);
    const columns = await byColumn();
    expect([...columns.lost]).toEqual([ids[1]]);
    expect(columns).toMatchObject({ written: 3, relabelled: 1 });

    // The other half by row, the last row changed by the application after the read.
    const rows = await s.readBatch(db.pool, { kind: 'label', kekId: '1' }, { after: ids[3]!, until: null }, 100);
    expect(rows.map((r) => r.$id)).toEqual(ids.slice(4));
    await db.pool.query(`UPDATE public.tenant SET encrypted_dek = 'v2:the-application' WHERE id = $1`, [ids[7]]);
    const writes = rows.map((row, i) => ({ id: row.$id, row, values: [news(4)[i]!], relabel: false }));
    const byRow = await s.compareAndSwap(db.pool, '1', '2', writes, ['active']);
    expect([...byRow.lost]).toEqual([ids[7]]);
    expect(byRow.written).toBe(3);

    expect(await stored()).toEqual(
      before.map((row, i) =>
        i === 1 || i === 7
          ? { ...row, encrypted_dek: 'v2:the-application' }
          : { ...row, encrypted_dek: `v2:new-${i}`, kek_version: 2 },
      ),
    );
  });
});
