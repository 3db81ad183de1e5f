// The rewrap of a chunk of rows as a crypto thread receives it: by column (src/crypto/columns.ts). For a format whose
// value is `prefix ‖ nonce ‖ ciphertext ‖ tag` in one column (Codec.inPlace: rekey's own in bytea, Mycelium's in
// base64 text), each value is opened where it lies in the packed column (a text value decoded into a scratch buffer
// first) and sealed straight into the packed column that goes back, with the native AES-GCM: no row object, no buffer
// per value, no repacking. Per row that was a dozen small allocations, more CPU than the AES itself. Any row this path cannot handle as it is (another form, a value that does not open under
// `from`: a relabel or a failure) goes through rewrapOne with the row unpacked, and so gets exactly the outcome and
// the reason rewrapRows gives; so does every row of any other format, of a scan of the others, and of a dry run.
import { randomBytes } from 'node:crypto';
import { base64Length, decodeBase64Into, encodeBase64Into } from '../codec/base64-bytes';
import {
  decodedLength,
  NONCE_BYTES,
  TAG_BYTES,
  type Codec,
  type InPlaceForm,
  type PackedField,
  type Row,
} from '../codec/sealed-format';
import { UnreadableValueError } from '../errors';
import {
  rewrapOne,
  rewrapOneAt,
  type RewrapRowsOptions,
  type RewrapRowsResult,
  type ScheduledKek,
} from '../rewrap/rewrap-rows';
import type { KeySchedule } from './aes-gcm';
import { packColumn, unpackColumn, type Column, type Columns } from './columns';
import { rewrapChunkNative } from './native-chunk';

/** A chunk's result by column: the written rows' indexes, relabel flags and each write column's new values. */
export interface RewrapChunkResult {
  indexes: Int32Array;
  relabel: Uint8Array;
  values: Column[];
  failures: RewrapRowsResult['failures'];
}

const isNative = (key: ScheduledKek['key']): key is KeySchedule => !Buffer.isBuffer(key);

export function rewrapColumns(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  rows: Columns,
  options: RewrapRowsOptions,
): RewrapChunkResult {
  const form = codec.inPlace;
  const value = form && rows.columns[form.column];
  const kind = form?.encoding === 'bytea' ? 'bytes' : 'text';
  if (form && value?.kind === kind && !options.others && !options.dryRun && isNative(from.key) && isNative(to.key)) {
    // One native call for the chunk where the addon has it (src/crypto/native-chunk.ts), else row by row here.
    return rewrapChunkNative(codec, from, to, rows, options)?.result ?? inPlace(codec, form, from, to, rows, options);
  }
  return byRow(codec, from, to, rows, options);
}

/** Every row unpacked and rewrapped as rewrapRows does it. */
function byRow(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  { count, columns }: Columns,
  options: RewrapRowsOptions,
): RewrapChunkResult {
  const unpacked = Object.entries(columns).map(([name, column]) => [name, unpackColumn(column)] as const);
  const nonces = options.dryRun ? Buffer.alloc(0) : randomBytes(NONCE_BYTES * count);
  const indexes: number[] = [];
  const relabel: number[] = [];
  const values: unknown[][] = [];
  const failures: RewrapRowsResult['failures'] = [];
  for (let i = 0; i < count; i++) {
    const outcome = rewrapOneAt(codec, from, to, unpacked, i, options, nonces);
    if (outcome === undefined) continue;
    if ('reason' in outcome) {
      failures.push({ index: i, reason: outcome.reason });
      continue;
    }
    indexes.push(i);
    relabel.push(outcome.relabel ? 1 : 0);
    values.push(outcome.values);
  }
  const width = options.dryRun ? 0 : codec.writeColumns.length;
  return {
    indexes: Int32Array.from(indexes),
    relabel: Uint8Array.from(relabel),
    values: Array.from({ length: width }, (_, c) => packColumn(values.map((v) => v[c]))),
    failures,
  };
}

function inPlace(
  codec: Codec,
  form: InPlaceForm,
  from: ScheduledKek,
  to: ScheduledKek,
  { count, columns }: Columns,
  options: RewrapRowsOptions,
): RewrapChunkResult {
  const fromKey = from.key as KeySchedule;
  const toKey = to.key as KeySchedule;
  const { lengths, bytes } = (columns[form.column] as Exclude<Column, { kind: 'values' }>).column;
  const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const { prefix, encoding } = form;
  const p = prefix.length;
  // A text format's value decoded into `raw`, and sealed into `sealed` before it is encoded; standard base64 both ways
  // from byte to byte (src/codec/base64-bytes.ts), the other alphabets through a string.
  const text = encoding !== 'bytea';
  const base64 = encoding === 'base64';
  const raw = text ? Buffer.allocUnsafe(1024) : input;
  const sealed = Buffer.allocUnsafe(text ? 1024 : 0);
  // The other columns (the associated data's): packed text read where it lies (PackedField, one per column, moved
  // along row by row), and only where that cannot build the associated data, the row's strings in one object reused
  // for every row.
  const others = Object.entries(columns).filter(([name]) => name !== form.column);
  const packed: Record<string, PackedField> = {};
  const cursors: { field: PackedField; lengths: Int32Array }[] = [];
  for (const [name, column] of others) {
    if (column.kind !== 'text' || !form.aadColumns.includes(name)) continue;
    const field = { bytes: column.column.bytes, start: 0, length: -1 };
    packed[name] = field;
    cursors.push({ field, lengths: column.column.lengths });
  }
  const allPacked = form.aadColumns.every((name) => packed[name] !== undefined);
  let unpacked: (readonly [string, unknown[]])[] | undefined;
  const view: Record<string, unknown> = {};
  let viewRow = -1;
  const rowView = (i: number): Row => {
    if (viewRow !== i) {
      unpacked ??= others.map(([name, column]) => [name, unpackColumn(column)] as const);
      for (const [name, column] of unpacked) view[name] = column[i];
      viewRow = i;
    }
    return view;
  };
  const aad = (i: number, kekId: string): Buffer =>
    (allPacked ? form.aadPacked(packed, kekId, scratch) : undefined) ?? form.aad(rowView(i), kekId, scratch);

  // Every write is as long as the value it replaces (same form, same plaintext): the input's size bounds the output.
  let out: Buffer = Buffer.alloc(input.length);
  let outLengths = new Int32Array(count);
  const indexes = new Int32Array(count);
  const relabel = new Uint8Array(count);
  const failures: RewrapRowsResult['failures'] = [];
  const nonces = randomBytes(NONCE_BYTES * count);
  const scratch = Buffer.allocUnsafe(256);
  let plaintext: Buffer = Buffer.alloc(form.plaintextBytes ?? 64);
  let written = 0;
  let at = 0; // where the next write goes in `out`
  let offset = 0; // where row i's value starts in `input`
  const put = (i: number, value: Buffer | string, relabelled: boolean) => {
    const size = typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.length;
    if (at + size > out.length) out = grow(out, at + size);
    if (typeof value === 'string') out.write(value, at, 'utf8');
    else value.copy(out, at);
    indexes[written] = i;
    relabel[written] = relabelled ? 1 : 0;
    outLengths[written] = size;
    written++;
    at += size;
  };
  try {
    for (let i = 0; i < count; i++) {
      const length = lengths[i]!;
      const start = offset;
      if (length > 0) offset += length;
      for (const { field, lengths: fieldLengths } of cursors) {
        if (field.length > 0) field.start += field.length;
        field.length = fieldLengths[i]!;
      }
      // Where the value's nonce ‖ ciphertext ‖ tag lie: in the packed bytes (bytea), or decoded into `raw` (text,
      // when it decodes exactly as the codec's own reading would: ASCII, every character used).
      let body = -1;
      let size = -1;
      if (length >= p && hasPrefix(input, start, prefix)) {
        if (!text) {
          body = start + p;
          size = length - p;
        } else if (base64) {
          size = decodeBase64Into(input, start + p, start + length, raw);
          if (size >= 0) body = 0;
        } else if (isAscii(input, start + p, start + length)) {
          const encoded = input.toString('latin1', start + p, start + length);
          const expected = decodedLength(encoded, encoding);
          if (expected >= 0 && expected < raw.length && raw.write(encoded, 0, raw.length, encoding) === expected) {
            body = 0;
            size = expected;
          }
        }
      }
      const n = size - NONCE_BYTES - TAG_BYTES;
      if (body >= 0 && n >= 0 && (form.plaintextBytes === undefined || n === form.plaintextBytes)) {
        if (plaintext.length < n) {
          plaintext.fill(0);
          plaintext = Buffer.alloc(n);
        }
        const clear = plaintext.length === n ? plaintext : plaintext.subarray(0, n);
        const ciphertext = body + NONCE_BYTES;
        // A row whose AAD cannot be built (a column that is not text) goes the long way, which names why.
        let opened = false;
        try {
          opened = fromKey.openInto(
            raw.subarray(body, ciphertext),
            raw.subarray(ciphertext, ciphertext + n),
            raw.subarray(ciphertext + n, ciphertext + n + TAG_BYTES),
            aad(i, from.kekId),
            clear,
          );
        } catch (err) {
          if (!(err instanceof UnreadableValueError)) throw err;
        }
        if (opened) {
          if (!text) {
            // Sealed where it goes: prefix, nonce, then ciphertext and tag.
            if (at + length > out.length) out = grow(out, at + length);
            prefix.copy(out, at);
            nonces.copy(out, at + p, i * NONCE_BYTES, (i + 1) * NONCE_BYTES);
            toKey.sealInto(
              out.subarray(at + p, at + p + NONCE_BYTES),
              clear,
              aad(i, to.kekId),
              out.subarray(at + p + NONCE_BYTES, at + length),
            );
            clear.fill(0);
            indexes[written] = i;
            outLengths[written] = length;
            written++;
            at += length;
          } else {
            nonces.copy(sealed, 0, i * NONCE_BYTES, (i + 1) * NONCE_BYTES);
            toKey.sealInto(
              sealed.subarray(0, NONCE_BYTES),
              clear,
              aad(i, to.kekId),
              sealed.subarray(NONCE_BYTES, size),
            );
            clear.fill(0);
            let encodedLength: number;
            if (base64) {
              encodedLength = base64Length(size);
              if (at + p + encodedLength > out.length) out = grow(out, at + p + encodedLength);
              prefix.copy(out, at);
              encodeBase64Into(sealed, 0, size, out, at + p);
            } else {
              const encoded = sealed.toString(encoding, 0, size);
              encodedLength = encoded.length;
              if (at + p + encodedLength > out.length) out = grow(out, at + p + encodedLength);
              prefix.copy(out, at);
              out.write(encoded, at + p, 'latin1');
            }
            indexes[written] = i;
            outLengths[written] = p + encodedLength;
            written++;
            at += p + encodedLength;
          }
          continue;
        }
      }
      // The long way: this row as rewrapRows sees it.
      const value =
        length < 0
          ? null
          : text
            ? input.toString('utf8', start, start + length)
            : input.subarray(start, start + length);
      const row: Row = { ...rowView(i), [form.column]: value };
      const outcome = rewrapOne(codec, from, to, row, options, nonces.subarray(i * NONCE_BYTES, (i + 1) * NONCE_BYTES));
      if (outcome === undefined) continue;
      if ('reason' in outcome) {
        failures.push({ index: i, reason: outcome.reason });
        continue;
      }
      put(i, outcome.values[0]!, outcome.relabel);
    }
  } finally {
    plaintext.fill(0);
    scratch.fill(0);
    if (text) {
      raw.fill(0);
      sealed.fill(0);
    }
  }
  outLengths = outLengths.slice(0, written);
  return {
    indexes: indexes.slice(0, written),
    relabel: relabel.slice(0, written),
    values: [
      {
        kind: text ? 'text' : 'bytes',
        column: { lengths: outLengths, bytes: new Uint8Array(out.buffer, out.byteOffset, at) },
      },
    ],
    failures,
  };
}

function isAscii(input: Buffer, start: number, end: number): boolean {
  for (let k = start; k < end; k++) if (input[k]! > 0x7f) return false;
  return true;
}

function hasPrefix(input: Buffer, start: number, prefix: Buffer): boolean {
  for (let k = 0; k < prefix.length; k++) if (input[start + k] !== prefix[k]) return false;
  return true;
}

function grow(out: Buffer, needed: number): Buffer {
  const bigger = Buffer.alloc(Math.max(needed, out.length * 2));
  out.copy(bigger);
  return bigger;
}
