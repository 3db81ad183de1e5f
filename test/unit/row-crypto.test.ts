import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT } from '../../src/codec/formats';
import { compileFormat, type Row } from '../../src/codec/sealed-format';
import { aesGcmBackend, releaseKey, scheduleKey } from '../../src/crypto/aes-gcm';
import { rewrapColumns } from '../../src/crypto/column-rewrap';
import { packRows, unpackColumn, unpackRows } from '../../src/crypto/columns';
import { rewrapChunk } from '../../src/crypto/rewrap-thread';
import { cryptoThreadsFromEnv, inlineRowCrypto, ThreadedRowCrypto } from '../../src/crypto/row-crypto';
import { unwrapDek, wrapDek } from '../../src/envelope/dek-wrapping';
import { REKEY_DEK_FORMAT, TALOS_SECRET_FORMAT } from '../../src/codec/formats';
import { ConfigError } from '../../src/errors';
import { rewrapRows } from '../../src/rewrap/rewrap-rows';
import { unwrapDek as myceliumUnwrap, wrapDek as myceliumWrap } from '../helpers/mycelium';
import { asRead } from '../helpers/packed-columns';

const from = { kekId: 'v1', key: randomBytes(32) };
const to = { kekId: 'v2', key: randomBytes(32) };
const third = { kekId: 'v0', key: randomBytes(32) };
const builtin = compileFormat(REKEY_DEK_FORMAT);
const threaded = new ThreadedRowCrypto(2);

afterAll(() => threaded.close());

/** 1,000 rows of rekey's own table: most on `from`, every 7th already under `to`, every 11th under a third KEK. */
function builtinRows(): { rows: Row[]; deks: Buffer[] } {
  const deks: Buffer[] = [];
  const rows: Row[] = [];
  for (let i = 0; i < 1_000; i++) {
    const id = `tenant-${String(i).padStart(5, '0')}`;
    const dek = randomBytes(32);
    const kek = i % 11 === 0 ? third : i % 7 === 0 ? to : from;
    deks.push(dek);
    rows.push({ $id: id, $label: 'v1', tenant_id: id, wrapped_dek: wrapDek(kek.key, kek.kekId, id, dek) });
  }
  return { rows, deks };
}

describe('rewrap crypto in threads', () => {
  it('gives what the inline crypto gives: the same rows written, relabelled and failed, each DEK intact under `to`', async () => {
    const { rows, deks } = builtinRows();
    const options = { others: false, dryRun: false };
    const inline = await inlineRowCrypto.rewrap(builtin, from, to, rows, options);
    const pooled = await threaded.rewrap(builtin, from, to, rows, options);
    const shape = (r: typeof inline) => ({
      writes: r.writes.map((w) => [w.index, w.relabel]),
      failures: r.failures.map((f) => [f.index, f.reason]),
    });
    expect(shape(pooled)).toEqual(shape(inline));
    expect(pooled.failures.map((f) => f.index)).toEqual(rows.map((_, i) => i).filter((i) => i % 11 === 0));
    expect(pooled.writes.filter((w) => w.relabel).map((w) => w.index)).toEqual(
      rows.map((_, i) => i).filter((i) => i % 7 === 0 && i % 11 !== 0),
    );
    for (const write of pooled.writes) {
      const value = write.values[0];
      expect(Buffer.isBuffer(value)).toBe(true);
      const id = rows[write.index]!.$id as string;
      expect(unwrapDek(to.key, 'v2', id, value as Buffer).equals(deks[write.index]!)).toBe(true);
    }
    // The caller's keys are its own: copies went to the threads.
    expect(from.key.some((b) => b !== 0) && to.key.some((b) => b !== 0)).toBe(true);
  });

  it("reads a text format (Mycelium's) the same way, and a scan of the others leaves a third KEK's rows alone", async () => {
    const mycelium = compileFormat(MYCELIUM_DEK_FORMAT);
    const rows: Row[] = Array.from({ length: 600 }, (_, i) => {
      const id = randomUUID();
      const dek = randomBytes(32);
      const kek = i % 2 === 0 ? from : third;
      const nonce = randomBytes(12);
      const sealed = mycelium.seal(kek.key, dek, { id }, kek.kekId, nonce);
      return { $id: id, $label: '9', id, encrypted_dek: sealed[0] };
    });
    const pooled = await threaded.rewrap(mycelium, from, to, rows, { others: true, dryRun: false });
    expect(pooled.failures).toEqual([]);
    expect(pooled.writes.map((w) => w.index)).toEqual(rows.map((_, i) => i).filter((i) => i % 2 === 0));
    expect(pooled.writes.every((w) => w.relabel && typeof w.values[0] === 'string')).toBe(true);
    const dry = await threaded.rewrap(mycelium, from, to, rows, { others: true, dryRun: true });
    expect(dry.writes.every((w) => w.values.length === 0)).toBe(true);
  });

  it('a chunk zeroizes the key copies it was given', () => {
    const fromCopy = new Uint8Array(from.key).buffer;
    const toCopy = new Uint8Array(to.key).buffer;
    const { rows } = builtinRows();
    const result = rewrapChunk({
      format: REKEY_DEK_FORMAT,
      from: { kekId: 'v1', key: fromCopy },
      to: { kekId: 'v2', key: toCopy },
      rows: packRows(rows.slice(0, 20)),
      options: { others: false, dryRun: false },
    });
    expect(result.indexes.length + result.failures.length).toBe(20);
    expect(new Uint8Array(fromCopy).every((b) => b === 0)).toBe(true);
    expect(new Uint8Array(toCopy).every((b) => b === 0)).toBe(true);
  });

  it('rows cross by column and come back as they were: text, bytes, NULL', () => {
    const rows = [
      { id: 'a', wrapped: Buffer.from('0102', 'hex'), note: null },
      { id: 'b', wrapped: null, note: 'x' },
      { id: 'c', wrapped: Buffer.alloc(0), note: 'y' },
    ];
    const packed = packRows(rows);
    expect(packed.columns.wrapped?.kind).toBe('bytes');
    expect(unpackRows(packed)).toEqual(rows);
  });

  it('REKEY_CRYPTO_THREADS: the cores by default, 0 for none, anything else named', () => {
    expect(cryptoThreadsFromEnv({})).toBeGreaterThanOrEqual(1);
    expect(cryptoThreadsFromEnv({ REKEY_CRYPTO_THREADS: '0' })).toBe(0);
    expect(cryptoThreadsFromEnv({ REKEY_CRYPTO_THREADS: '3' })).toBe(3);
    expect(() => cryptoThreadsFromEnv({ REKEY_CRYPTO_THREADS: 'all' })).toThrow(ConfigError);
    expect(() => cryptoThreadsFromEnv({ REKEY_CRYPTO_THREADS: '-1' })).toThrow(/REKEY_CRYPTO_THREADS.*'-1'/);
  });
});

describe('rewrap by column, in place', () => {
  /** Rows of every kind a chunk may hold: most on `from`, some under `to` or a third KEK, and malformed ones. */
  function mixedRows(): { rows: Row[]; deks: (Buffer | undefined)[] } {
    const deks: (Buffer | undefined)[] = [];
    const rows: Row[] = [];
    for (let i = 0; i < 400; i++) {
      // Ids of several lengths and scripts: the associated data is built in a scratch buffer of its own size.
      const id = i % 13 === 0 ? `tenant-ü-${'x'.repeat(i)}` : `tenant-${i}`;
      const dek = randomBytes(32);
      const kek = i % 11 === 0 ? third : i % 7 === 0 ? to : from;
      let wrapped: Buffer | null = wrapDek(kek.key, kek.kekId, id, dek);
      let tenant: string | null = id;
      if (i % 17 === 0) wrapped = null;
      else if (i % 19 === 0)
        wrapped = Buffer.concat([Buffer.from('02', 'hex'), wrapped.subarray(1)]); // KMS's form
      else if (i % 23 === 0)
        wrapped = wrapped.subarray(0, 20); // too short
      else if (i % 29 === 0) wrapped = Buffer.concat([wrapped.subarray(0, 45), Buffer.alloc(1), wrapped.subarray(45)]);
      else if (i % 31 === 0) tenant = null; // no associated data to bind to
      const readable = wrapped !== null && tenant !== null && kek !== third && i % 19 && i % 23 && i % 29;
      deks.push(readable ? dek : undefined);
      rows.push({ $id: id, $label: 'v1', tenant_id: tenant, wrapped_dek: wrapped });
    }
    return { rows, deks };
  }

  /** rewrapColumns against rewrapRows on the same rows: the same outcome for each, and the values written. */
  function compare(codec: ReturnType<typeof compileFormat>, rows: Row[]) {
    const options = { others: false, dryRun: false };
    const expected = rewrapRows(codec, from, to, rows, options);
    const fromKey = scheduleKey(Buffer.from(from.key));
    const toKey = scheduleKey(Buffer.from(to.key));
    try {
      const result = rewrapColumns(
        codec,
        { kekId: 'v1', key: fromKey },
        { kekId: 'v2', key: toKey },
        asRead(packRows(rows, codec.readColumns)),
        options,
      );
      expect([...result.indexes]).toEqual(expected.writes.map((w) => w.index));
      expect([...result.relabel]).toEqual(expected.writes.map((w) => (w.relabel ? 1 : 0)));
      expect(result.failures).toEqual(expected.failures);
      expect(result.values).toHaveLength(1);
      return { result, expected, values: unpackColumn(result.values[0]!) };
    } finally {
      releaseKey(fromKey);
      releaseKey(toKey);
    }
  }

  it('writes, relabels and fails exactly the rows rewrapRows does, with the same reasons, each DEK intact under `to`', () => {
    expect(aesGcmBackend().name, 'npm run setup builds the native AES-GCM addon the in-place path uses').toBe('native');
    expect(builtin.inPlace).toBeDefined();
    const { rows, deks } = mixedRows();
    const { result, expected, values } = compare(builtin, rows);
    expect(expected.failures.length).toBeGreaterThan(30);
    result.indexes.forEach((index, i) => {
      const value = values[i] as Buffer;
      expect(value.length).toBe(61);
      expect(unwrapDek(to.key, 'v2', rows[index]!.tenant_id as string, value).equals(deks[index]!)).toBe(true);
    });
    expect(deks.filter((d) => d !== undefined)).toHaveLength(result.indexes.length);
  });

  it("does the same for Mycelium's text format: base64 decoded and written again in place, malformed text failing as rewrapRows says", () => {
    const mycelium = compileFormat(MYCELIUM_DEK_FORMAT);
    expect(mycelium.inPlace).toBeDefined();
    const deks: (Buffer | undefined)[] = [];
    const rows: Row[] = Array.from({ length: 300 }, (_, i) => {
      const id = randomUUID();
      const dek = randomBytes(32);
      const kek = i % 11 === 0 ? third : i % 7 === 0 ? to : from;
      let stored: string | null = myceliumWrap(kek.key, id, dek);
      if (i % 13 === 0) stored = null;
      else if (i % 17 === 0)
        stored = stored.replace('v2:', 'v1:'); // another version's prefix
      else if (i % 19 === 0)
        stored = `${stored.slice(0, 20)} ${stored.slice(20)}`; // a space Node's decoder skips
      else if (i % 23 === 0)
        stored = `${stored.slice(0, 20)}é${stored.slice(21)}`; // not ASCII
      else if (i % 29 === 0) stored = stored.slice(0, -4); // short
      const readable = stored !== null && kek !== third && i % 17 && i % 19 && i % 23 && i % 29;
      deks.push(readable ? dek : undefined);
      return { $id: id, $label: '1', id, encrypted_dek: stored };
    });
    const { result, expected, values } = compare(mycelium, rows);
    expect(expected.failures.length).toBeGreaterThan(50);
    expect(result.values[0]!.kind).toBe('text');
    result.indexes.forEach((index, i) => {
      const value = values[i] as string;
      expect(value.startsWith('v2:')).toBe(true);
      expect(myceliumUnwrap(to.key, rows[index]!.id as string, value).equals(deks[index]!)).toBe(true);
    });
    expect(deks.filter((d) => d !== undefined)).toHaveLength(result.indexes.length);
  });

  it("reads Mycelium's text from its bytes as the codec reads the string: upper-case and dashless ids, URL-safe characters, padding inside, a UUID it cannot read", () => {
    const mycelium = compileFormat(MYCELIUM_DEK_FORMAT);
    const deks: (Buffer | undefined)[] = [];
    const rows: Row[] = Array.from({ length: 240 }, (_, i) => {
      const uuid = randomUUID();
      // The codec reads a UUID in upper case, or without its dashes; not with a dash out of place.
      const misplaced = i % 37 === 0 && i % 5 > 1;
      const id =
        i % 5 === 0
          ? uuid.toUpperCase()
          : i % 5 === 1
            ? uuid.replace(/-/g, '')
            : misplaced
              ? `${uuid.slice(0, 7)}-${uuid.slice(7, 8)}${uuid.slice(9)}`
              : uuid;
      const dek = randomBytes(32);
      let stored = myceliumWrap(from.key, uuid, dek);
      let readable = !misplaced;
      if (i % 7 === 0) {
        // Node's decoder takes '-' and '_' for '+' and '/': the codec opens such a value, and so must this path.
        const plus = stored.indexOf('+', 3);
        const slash = stored.indexOf('/', 3);
        if (plus > 0) stored = `${stored.slice(0, plus)}-${stored.slice(plus + 1)}`;
        else if (slash > 0) stored = `${stored.slice(0, slash)}_${stored.slice(slash + 1)}`;
      } else if (i % 11 === 0) {
        stored = `${stored.slice(0, 23)}=${stored.slice(24)}`; // padding inside: not base64
        readable = false;
      } else if (i % 13 === 0) {
        stored = `${stored}==`; // padding past the end
        readable = false;
      }
      deks.push(readable ? dek : undefined);
      return { $id: id, $label: '1', id, encrypted_dek: stored };
    });
    const { result, expected, values } = compare(mycelium, rows);
    expect(expected.failures.length).toBeGreaterThan(10);
    expect(deks.filter((d) => d !== undefined)).toHaveLength(result.indexes.length);
    result.indexes.forEach((index, i) => {
      const value = values[i] as string;
      expect(value).toMatch(/^v2:[A-Za-z0-9+/]{80}$/);
      const uuid = (rows[index]!.id as string).replace(/-/g, '').toLowerCase();
      const dashed = `${uuid.slice(0, 8)}-${uuid.slice(8, 12)}-${uuid.slice(12, 16)}-${uuid.slice(16, 20)}-${uuid.slice(20)}`;
      expect(myceliumUnwrap(to.key, dashed, value).equals(deks[index]!)).toBe(true);
    });
  });

  it('is only taken for one column holding prefix, nonce, ciphertext and tag, with nothing else written', () => {
    expect(compileFormat(TALOS_SECRET_FORMAT).inPlace).toBeUndefined(); // three columns, and its AAD stored
    // Without a prefix, a KMS or Transit value could not be told apart from a sealed one by its first byte.
    const unprefixed = { kind: 'combined', column: 'wrapped_dek', encoding: 'bytea' } as const;
    expect(compileFormat({ ...REKEY_DEK_FORMAT, value: unprefixed }).inPlace).toBeUndefined();
    expect(compileFormat({ aad: REKEY_DEK_FORMAT.aad, value: unprefixed }).inPlace).toBeDefined();
  });
});
