// The native chunk call (src/crypto/native-chunk.ts, native/aes-gcm rewrap_chunk) against the codec row by row:
// the same rows with the same nonces must give the same outcome, reason and bytes for every row.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, REKEY_DEK_FORMAT } from '../../src/codec/formats';
import { compileFormat, type Codec, type Row } from '../../src/codec/sealed-format';
import { aesGcmBackend, nativeChunkCall, nativeSchedule, releaseKey, scheduleKey } from '../../src/crypto/aes-gcm';
import { rewrapColumns } from '../../src/crypto/column-rewrap';
import { packRows, unpackColumn, unpackRows } from '../../src/crypto/columns';
import { rewrapChunkNative, ROW_NOT_FORM, ROW_NOT_OPENED, ROW_WRITTEN } from '../../src/crypto/native-chunk';
import { wrapDek } from '../../src/envelope/dek-wrapping';
import { rewrapOne, type ScheduledKek } from '../../src/rewrap/rewrap-rows';
import { wrapDek as myceliumWrap } from '../helpers/mycelium';
import { asRead } from '../helpers/packed-columns';

const from = { kekId: 'v1', key: randomBytes(32) };
const to = { kekId: 'v2-ü', key: randomBytes(32) };
const third = { kekId: 'v0', key: randomBytes(32) };
const options = { others: false, dryRun: false };

/** A random id of 1 to 40 characters from ASCII, Latin-1, CJK and astral planes. */
function randomId(): string {
  const alphabet = ['a', 'Z', '7', '-', ' ', 'ü', 'é', '中', '文', '😀', '\u0000', '/'];
  return Array.from(
    { length: 1 + Math.floor(Math.random() * 40) },
    () => alphabet[Math.floor(Math.random() * alphabet.length)]!,
  ).join('');
}

/** rekey's own rows: most on `from`, some under `to` or a third KEK, and each kind of malformed row. */
function rekeyRows(count: number): Row[] {
  return Array.from({ length: count }, (_, i) => {
    const id = randomId();
    const kek = i % 11 === 0 ? third : i % 7 === 0 ? to : from;
    let wrapped: Buffer | null = wrapDek(kek.key, kek.kekId, id, randomBytes(32));
    let tenant: string | null = id;
    if (i % 17 === 0) wrapped = null;
    else if (i % 19 === 0)
      wrapped = Buffer.concat([Buffer.from('02', 'hex'), wrapped.subarray(1)]); // KMS's form
    else if (i % 23 === 0)
      wrapped = wrapped.subarray(0, 20); // too short
    else if (i % 29 === 0) wrapped = Buffer.concat([wrapped.subarray(0, 45), Buffer.alloc(1), wrapped.subarray(45)]);
    else if (i % 31 === 0)
      tenant = null; // no associated data to bind to
    else if (i % 37 === 0)
      wrapped = Buffer.concat([wrapped, Buffer.alloc(1)]); // a byte too many
    else if (i % 41 === 0)
      wrapped[30] = wrapped[30]! ^ 1; // tampered
    else if (i % 43 === 0) tenant = `${id}x`; // another row's binding
    return { $id: String(i), $label: 'v1', tenant_id: tenant, wrapped_dek: wrapped };
  });
}

/** Mycelium's rows: UUIDs in each form the codec reads (and one it does not), and each kind of malformed text. */
function myceliumRows(count: number): Row[] {
  return Array.from({ length: count }, (_, i) => {
    const uuid = randomUUID();
    const id =
      i % 5 === 0
        ? uuid.toUpperCase()
        : i % 5 === 1
          ? uuid.replace(/-/g, '')
          : i % 37 === 2
            ? `${uuid.slice(0, 7)}-${uuid.slice(7, 8)}${uuid.slice(9)}` // a dash out of place
            : uuid;
    const kek = i % 11 === 0 ? third : i % 7 === 0 ? to : from;
    let stored: string | null = myceliumWrap(kek.key, uuid, randomBytes(32));
    if (i % 13 === 0) stored = null;
    else if (i % 17 === 0) stored = stored.replace('v2:', 'v1:');
    else if (i % 19 === 0)
      stored = `${stored.slice(0, 20)} ${stored.slice(20)}`; // a space Node's decoder skips
    else if (i % 23 === 0)
      stored = `${stored.slice(0, 20)}é${stored.slice(21)}`; // not ASCII
    else if (i % 29 === 0)
      stored = stored.slice(0, -4); // short
    else if (i % 31 === 0)
      stored = `${stored.slice(0, 23)}=${stored.slice(24)}`; // padding inside
    else if (i % 41 === 0)
      stored = `${stored}==`; // padding past the end
    else if (i % 3 === 0) {
      // URL-safe characters, which Node's decoder reads as '+' and '/'
      stored = stored.slice(0, 3) + stored.slice(3).replace(/\+/g, '-').replace(/\//g, '_');
    }
    return { $id: String(i), $label: '1', id, encrypted_dek: stored };
  });
}

/** Each row through rewrapOne with its nonce: the codec's outcome and bytes. */
function byCodec(codec: Codec, fromKek: ScheduledKek, toKek: ScheduledKek, rows: Row[], nonces: Buffer) {
  const writes: { index: number; relabel: boolean; value: Buffer }[] = [];
  const failures: { index: number; reason: string }[] = [];
  rows.forEach((row, i) => {
    const outcome = rewrapOne(codec, fromKek, toKek, row, options, nonces.subarray(i * 12, (i + 1) * 12));
    if (outcome === undefined) return;
    if ('reason' in outcome) failures.push({ index: i, reason: outcome.reason });
    else {
      const value = outcome.values[0]!;
      writes.push({ index: i, relabel: outcome.relabel, value: Buffer.isBuffer(value) ? value : Buffer.from(value) });
    }
  });
  return { writes, failures };
}

/** `rows` packed as read, through the one native call with `nonces`. */
function nativeChunk(codec: Codec, fromKek: ScheduledKek, toKek: ScheduledKek, rows: Row[], nonces: Buffer) {
  return rewrapChunkNative(codec, fromKek, toKek, asRead(packRows(rows, codec.readColumns)), options, nonces);
}

function schedules() {
  const fromKey = scheduleKey(Buffer.from(from.key));
  const toKey = scheduleKey(Buffer.from(to.key));
  return {
    fromKek: { kekId: from.kekId, key: fromKey },
    toKek: { kekId: to.kekId, key: toKey },
    release: () => {
      releaseKey(fromKey);
      releaseKey(toKey);
    },
  };
}

describe('one native call per chunk', () => {
  for (const [name, format, make] of [
    ["rekey's bytea format", REKEY_DEK_FORMAT, rekeyRows],
    ["Mycelium's base64 text format", MYCELIUM_DEK_FORMAT, myceliumRows],
  ] as const) {
    it(`gives, for ${name}, every row the outcome, the reason and the very bytes the codec gives it with the same nonce`, () => {
      expect(aesGcmBackend().name, 'npm run setup builds the native AES-GCM addon').toBe('native');
      const codec = compileFormat(format);
      const rows = make(1_000);
      const nonces = randomBytes(12 * rows.length);
      const { fromKek, toKek, release } = schedules();
      try {
        const chunk = nativeChunk(codec, fromKek, toKek, rows, nonces);
        expect(chunk, 'the native call applies').toBeDefined();
        const expected = byCodec(codec, fromKek, toKek, rows, nonces);
        const { result, nativeRows } = chunk!;
        // Most rows in the call, and every kind of other row the codec's way.
        expect(nativeRows).toBeGreaterThan(300);
        expect(expected.failures.length).toBeGreaterThan(100);
        expect(expected.writes.filter((w) => w.relabel).length).toBeGreaterThan(50);
        expect(expected.writes.length).toBeGreaterThan(nativeRows);
        expect([...result.indexes]).toEqual(expected.writes.map((w) => w.index));
        expect([...result.relabel]).toEqual(expected.writes.map((w) => (w.relabel ? 1 : 0)));
        expect(result.failures).toEqual(expected.failures);
        const values = unpackColumn(result.values[0]!).map((v) => (Buffer.isBuffer(v) ? v : Buffer.from(v as string)));
        expect(values.map((v) => v.toString('hex'))).toEqual(expected.writes.map((w) => w.value.toString('hex')));
      } finally {
        release();
      }
    });
  }

  it('a chunk with every row in the form comes back from the one call, as rewrapColumns gives it', () => {
    const codec = compileFormat(REKEY_DEK_FORMAT);
    const rows = Array.from({ length: 300 }, (_, i) => {
      const id = `tenant-${i}-${randomId()}`;
      return {
        $id: String(i),
        $label: 'v1',
        tenant_id: id,
        wrapped_dek: wrapDek(from.key, from.kekId, id, randomBytes(32)),
      };
    });
    const nonces = randomBytes(12 * rows.length);
    const { fromKek, toKek, release } = schedules();
    try {
      const chunk = nativeChunk(codec, fromKek, toKek, rows, nonces);
      expect(chunk!.nativeRows).toBe(300);
      const expected = byCodec(codec, fromKek, toKek, rows, nonces);
      const values = unpackColumn(chunk!.result.values[0]!) as Buffer[];
      expect(values.map((v) => v.toString('hex'))).toEqual(expected.writes.map((w) => w.value.toString('hex')));
      const viaColumns = rewrapColumns(codec, fromKek, toKek, asRead(packRows(rows, codec.readColumns)), options);
      expect([...viaColumns.indexes]).toEqual([...chunk!.result.indexes]);
    } finally {
      release();
    }
  });

  it('marks each row: written, not opened under `from`, or not in the form it reads', () => {
    const codec = compileFormat(REKEY_DEK_FORMAT);
    const rows: Row[] = [
      { tenant_id: 't-1', wrapped_dek: wrapDek(from.key, from.kekId, 't-1', randomBytes(32)) },
      { tenant_id: 't-2', wrapped_dek: wrapDek(to.key, to.kekId, 't-2', randomBytes(32)) },
      { tenant_id: 't-3', wrapped_dek: null },
      { tenant_id: null, wrapped_dek: wrapDek(from.key, from.kekId, 't-4', randomBytes(32)) },
      { tenant_id: 't-5', wrapped_dek: Buffer.from('02abcd', 'hex') },
    ];
    const columns = asRead(packRows(rows, codec.readColumns));
    const { fromKek, toKek, release } = schedules();
    try {
      const call = nativeChunkCall(fromKek.key, toKek.key)!;
      const value = columns.columns.wrapped_dek!;
      const tenant = columns.columns.tenant_id!;
      if (value.kind !== 'bytes' || tenant.kind !== 'text') throw new Error('packed as read');
      const outcomes = new Uint8Array(rows.length);
      const recipe = Buffer.concat([
        Buffer.from([1, 13, 0, 0, 0]),
        Buffer.from('rekey/dek/v1\0'),
        Buffer.from([2, 0, 2, 3, 2]),
      ]);
      const form = Buffer.from([0, 32, 0, 0, 0, 1, 1]);
      const args = [
        form,
        recipe,
        Buffer.from(from.kekId),
        Buffer.from(to.kekId),
        value.column.lengths,
        value.column.bytes,
        [tenant.column.lengths],
        [tenant.column.bytes],
        randomBytes(12 * rows.length),
      ] as const;
      const written = call(...args, new Uint8Array(1024), new Int32Array(5), new Int32Array(5), outcomes);
      expect(written).toBe(1);
      expect([...outcomes]).toEqual([ROW_WRITTEN, ROW_NOT_OPENED, ROW_NOT_FORM, ROW_NOT_FORM, ROW_NOT_FORM]);
      // An output that shares memory with an input is refused before anything is read or written.
      expect(() => call(...args, value.column.bytes, new Int32Array(5), new Int32Array(5), outcomes)).toThrow(
        /shares memory/,
      );
      const lengths = new Int32Array(5);
      expect(() => call(...args, new Uint8Array(1024), lengths, lengths, outcomes)).toThrow(/shares memory/);
      // Lengths that run past the bytes are refused, not read past.
      const long = Int32Array.from([61, 61, 61, 61, 1 << 20]);
      expect(() =>
        call(
          form,
          recipe,
          Buffer.from('a'),
          Buffer.from('b'),
          long,
          value.column.bytes,
          [tenant.column.lengths],
          [tenant.column.bytes],
          randomBytes(60),
          new Uint8Array(1024),
          new Int32Array(5),
          new Int32Array(5),
          outcomes,
        ),
      ).toThrow(/run past/);
    } finally {
      release();
    }
  });

  it("is not taken with Node's AES-GCM (REKEY_AES_GCM=node) or an addon built before it, and the rewrap is as before", () => {
    const codec = compileFormat(REKEY_DEK_FORMAT);
    const rows = rekeyRows(200);
    const columns = asRead(packRows(rows, codec.readColumns));
    // Node's AES-GCM: the keys are Buffers.
    expect(rewrapChunkNative(codec, from, to, columns, options)).toBeUndefined();
    const byNode = rewrapColumns(codec, from, to, columns, options);
    // An addon without rewrapChunk: its schedules, in-place row by row.
    const { addon } = aesGcmBackend();
    const older = { GcmKey: addon!.GcmKey };
    const fromKey = nativeSchedule(older, Buffer.from(from.key));
    const toKey = nativeSchedule(older, Buffer.from(to.key));
    try {
      const fromKek = { kekId: from.kekId, key: fromKey };
      const toKek = { kekId: to.kekId, key: toKey };
      expect(nativeChunkCall(fromKey, toKey)).toBeUndefined();
      expect(rewrapChunkNative(codec, fromKek, toKek, columns, options)).toBeUndefined();
      const byOlder = rewrapColumns(codec, fromKek, toKek, columns, options);
      expect([...byOlder.indexes]).toEqual([...byNode.indexes]);
      expect(byOlder.failures).toEqual(byNode.failures);
      expect(unpackRows(columns).length).toBe(200);
    } finally {
      fromKey.release();
      toKey.release();
    }
  });
});
