// Array parameters in PostgreSQL's binary form. node-postgres sends a Buffer parameter as binary and anything else
// as text: a JavaScript array goes as an array literal, each element quoted and escaped here and parsed again by the
// server; the same array in binary (array_recv's format) is each element's length and bytes, copied once. The rewrap
// engine's compare-and-swap sends its ids, version tokens and text values this way, a batch at a time.

/** The element types rekey sends (pg_type OIDs) and the byte width of each fixed-size one. */
const TEXT_OID = 25;
const UUID_OID = 2950;
const UUID_BYTES = 16;
const INTEGER_OIDS = { int2: { oid: 21, bytes: 2 }, int4: { oid: 23, bytes: 4 }, int8: { oid: 20, bytes: 8 } } as const;
export type IntegerType = keyof typeof INTEGER_OIDS;

/** ndim, has-nulls flag, element type; then the one dimension's length and lower bound (none when empty). */
const HEADER_BYTES = 20;
const headerBytes = (count: number) => (count === 0 ? 12 : HEADER_BYTES);

function header(out: Buffer, count: number, oid: number, hasNull: boolean): number {
  out.writeInt32BE(count === 0 ? 0 : 1, 0);
  out.writeInt32BE(hasNull ? 1 : 0, 4);
  out.writeInt32BE(oid, 8);
  if (count === 0) return 12; // an empty array has no dimensions
  out.writeInt32BE(count, 12);
  out.writeInt32BE(1, 16);
  return HEADER_BYTES;
}

/** A text[] parameter (null elements allowed), to be written in SQL as `$n::text[]`. */
export function textArray(values: readonly (string | null)[]): Buffer {
  let total = headerBytes(values.length);
  let hasNull = false;
  const lengths = new Int32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === null || value === undefined) {
      lengths[i] = -1;
      hasNull = true;
      total += 4;
      continue;
    }
    const length = Buffer.byteLength(value, 'utf8');
    lengths[i] = length;
    total += 4 + length;
  }
  const out = Buffer.allocUnsafe(total);
  let offset = header(out, values.length, TEXT_OID, hasNull);
  for (let i = 0; i < values.length; i++) {
    const length = lengths[i]!;
    offset = out.writeInt32BE(length, offset);
    if (length > 0) offset += out.write(values[i]!, offset, length, 'utf8');
  }
  return out;
}

/**
 * An integer array of the given type from the integers' decimal text (how the engine reads a version), to be written
 * in SQL as `$n::<type>[]`. Text that is not a whole number in the type's range is refused.
 */
export function integerArray(values: readonly string[], type: IntegerType): Buffer {
  const { oid, bytes } = INTEGER_OIDS[type];
  const out = Buffer.allocUnsafe(headerBytes(values.length) + values.length * (4 + bytes));
  let offset = header(out, values.length, oid, false);
  for (const text of values) {
    offset = out.writeInt32BE(bytes, offset);
    const value = Number(text);
    if (!Number.isSafeInteger(value) || String(value) !== text) {
      // Not a plain safe integer (beyond 2^53, or not a number at all): exactly, or refused.
      if (bytes !== 8 || !/^-?\d+$/.test(text)) throw new RangeError(`'${text}' is not an integer of type ${type}`);
      offset = out.writeBigInt64BE(BigInt(text), offset);
    } else if (bytes === 8) {
      offset = out.writeInt32BE(Math.floor(value / 2 ** 32), offset);
      offset = out.writeUInt32BE(value >>> 0, offset);
    } else if (bytes === 4) offset = out.writeInt32BE(value, offset);
    else offset = out.writeInt16BE(value, offset);
  }
  return out;
}

/**
 * A uuid[] parameter from UUIDs in the text form PostgreSQL writes them (`uuid_out`: 8-4-4-4-12 hex digits), to be
 * written in SQL as `$n::uuid[]`: each element its 16 bytes, so that the server parses no text per element (`uuid_in`
 * calls strtoul for each of a UUID's 16 bytes). Anything else is refused.
 */
export function uuidArray(values: readonly string[]): Buffer {
  const out = Buffer.allocUnsafe(headerBytes(values.length) + values.length * (4 + UUID_BYTES));
  let offset = header(out, values.length, UUID_OID, false);
  for (const text of values) {
    offset = out.writeInt32BE(UUID_BYTES, offset);
    const source = Buffer.from(text, 'utf8');
    uuidInto(source, 0, source.length, out, offset);
    offset += UUID_BYTES;
  }
  return out;
}

/** Each byte's value as a hex digit (0-9, a-f, A-F), -1 for any other byte. */
const HEX = Int8Array.from({ length: 256 }, (_, c) => {
  if (c >= 48 && c <= 57) return c - 48;
  const lower = c | 0x20;
  return lower >= 97 && lower <= 102 ? lower - 87 : -1;
});

/** A UUID's canonical text (36 bytes at `start`) as its 16 bytes at `out[offset]`; RangeError for anything else. */
function uuidInto(source: Uint8Array, start: number, length: number, out: Uint8Array, offset: number): void {
  const refuse = () =>
    new RangeError(
      `'${Buffer.from(source.subarray(start, start + Math.max(0, length))).toString('utf8')}' is not a UUID as PostgreSQL writes one`,
    );
  if (length !== 36) throw refuse();
  let at = start;
  for (let k = 0; k < UUID_BYTES; k++) {
    if (k === 4 || k === 6 || k === 8 || k === 10) {
      if (source[at] !== 45) throw refuse(); // '-'
      at++;
    }
    const high = HEX[source[at]!]!;
    const low = HEX[source[at + 1]!]!;
    if (high < 0 || low < 0) throw refuse();
    out[offset + k] = (high << 4) | low;
    at += 2;
  }
}

export function isIntegerType(type: string): type is IntegerType {
  return type in INTEGER_OIDS;
}

/** Packed values (src/crypto/columns.ts's ByteColumn): each one's length (-1 for NULL), the bytes one after another. */
export interface PackedValues {
  lengths: Int32Array;
  bytes: Uint8Array;
}

/** Where each packed value starts. */
function starts(lengths: Int32Array): Int32Array {
  const out = new Int32Array(lengths.length);
  let offset = 0;
  for (let i = 0; i < lengths.length; i++) {
    out[i] = offset;
    if (lengths[i]! > 0) offset += lengths[i]!;
  }
  return out;
}

/**
 * An array parameter of the elements `which` (indexes, in order) of packed values whose bytes are already each
 * element's binary form: UTF-8 text for a text[] (a binary COPY's text field), big-endian integers of the type's width
 * for an integer array (a binary COPY's integer field). No string, no number per element. For a uuid[], the packed
 * values are UUIDs as text (a uuid column read as `::text`), each written as its 16 bytes (uuidArray's rule).
 */
export function packedArray(
  values: PackedValues,
  which: ArrayLike<number>,
  type: 'text' | 'uuid' | IntegerType,
): Buffer {
  if (type === 'uuid') return packedUuidArray(values, which);
  const { oid, bytes: width } = type === 'text' ? { oid: TEXT_OID, bytes: 0 } : INTEGER_OIDS[type];
  const at = starts(values.lengths);
  let total = headerBytes(which.length);
  let hasNull = false;
  for (let i = 0; i < which.length; i++) {
    const length = values.lengths[which[i]!]!;
    if (length < 0) {
      if (type !== 'text') throw new RangeError(`a NULL in an array of ${type}`);
      hasNull = true;
    } else if (type !== 'text' && length !== width) {
      throw new RangeError(`a ${length}-byte value in an array of ${type}`);
    }
    total += 4 + Math.max(0, length);
  }
  const out = Buffer.allocUnsafe(total);
  let offset = header(out, which.length, oid, hasNull);
  // Plain typed arrays, not Buffer methods, in the loop: a byte-by-byte copy into a Buffer and writeInt32BE per
  // element made this 6% of a Mycelium rewrap's worker CPU (text values of 84 bytes, three columns a row).
  const bytes = new Uint8Array(out.buffer, out.byteOffset, out.length);
  const view = new DataView(out.buffer, out.byteOffset, out.length);
  const source = values.bytes;
  const lengths = values.lengths;
  for (let i = 0; i < which.length; i++) {
    const index = which[i]!;
    const length = lengths[index]!;
    view.setInt32(offset, length);
    offset += 4;
    if (length > 0) {
      const start = at[index]!;
      bytes.set(source.subarray(start, start + length), offset);
      offset += length;
    }
  }
  return out;
}

function packedUuidArray(values: PackedValues, which: ArrayLike<number>): Buffer {
  const at = starts(values.lengths);
  const out = Buffer.allocUnsafe(headerBytes(which.length) + which.length * (4 + UUID_BYTES));
  let offset = header(out, which.length, UUID_OID, false);
  const bytes = new Uint8Array(out.buffer, out.byteOffset, out.length);
  const view = new DataView(out.buffer, out.byteOffset, out.length);
  const { lengths } = values;
  for (let i = 0; i < which.length; i++) {
    const index = which[i]!;
    view.setInt32(offset, UUID_BYTES);
    uuidInto(values.bytes, at[index]!, lengths[index]!, bytes, offset + 4);
    offset += 4 + UUID_BYTES;
  }
  return out;
}
