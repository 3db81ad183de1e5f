// Rows read with `COPY (SELECT …) TO STDOUT (FORMAT binary)`: the rewrap engine's reads. node-postgres decodes every
// field of an ordinary result as UTF-8 text, in text or binary mode alike (pg-protocol's DataRow parser), so a bytea
// arrives as hex text to be decoded again and every row is parsed into an object by its type parsers; COPY's binary
// form brings each field's own bytes in one stream, read here into rows in one pass: a text field decoded once, a
// bytea field a view of the bytes that came (no copy). COPY takes no parameters: the caller writes its values as
// literals (literal()).
import { escapeLiteral, type PoolClient } from 'pg';
import { to as copyTo } from 'pg-copy-streams';

/** How a field of the COPY is read: as text (UTF-8) or as the bytes of a bytea. */
export interface CopyColumn {
  name: string;
  bytes: boolean;
  /** Another name the row carries the same value under. */
  also?: string;
}

/** PGCOPY\n\377\r\n\0: the signature every binary COPY starts with. */
const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
const HEADER_BYTES = SIGNATURE.length + 4 + 4;

/** A value written into SQL text, quoted as a literal (a COPY's query takes no parameters). */
export function literal(value: string): string {
  if (value.includes('\0')) throw new RangeError('a PostgreSQL text value cannot hold a NUL character');
  return escapeLiteral(value);
}

/** The whole output of a binary COPY of `select`, as one buffer. */
export async function copyOutBinary(client: PoolClient, select: string): Promise<Buffer> {
  const stream = client.query(copyTo(`COPY (${select}) TO STDOUT (FORMAT binary)`));
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    length += chunk.length;
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length);
}

/**
 * The rows of a binary COPY, each an object with `columns`' names in their order (and `constant` first): text fields
 * as strings, bytea fields as views of `data`, NULL as null.
 */
export function parseBinaryCopy(
  data: Buffer,
  columns: readonly CopyColumn[],
  constant?: { name: string; value: unknown },
): Record<string, unknown>[] {
  if (data.length < HEADER_BYTES + 2 || data.compare(SIGNATURE, 0, SIGNATURE.length, 0, SIGNATURE.length) !== 0) {
    throw new Error('COPY … (FORMAT binary) returned something else than binary COPY data');
  }
  let offset = HEADER_BYTES + data.readUInt32BE(SIGNATURE.length + 4); // the header extension, skipped
  const rows: Record<string, unknown>[] = [];
  const count = columns.length;
  const names = columns.map((c) => c.name);
  const bytes = columns.map((c) => c.bytes);
  const also = columns.map((c) => c.also);
  for (;;) {
    const fields = data.readInt16BE(offset);
    offset += 2;
    if (fields === -1) break; // the trailer
    if (fields !== count) throw new Error(`COPY returned a row of ${fields} fields, expected ${count}`);
    const row: Record<string, unknown> = {};
    if (constant) row[constant.name] = constant.value;
    for (let i = 0; i < count; i++) {
      const length = data.readInt32BE(offset);
      offset += 4;
      let value: unknown = null;
      if (length >= 0) {
        const end = offset + length;
        if (end > data.length) throw new Error('COPY data ends inside a field');
        value = bytes[i] ? data.subarray(offset, end) : data.toString('utf8', offset, end);
        offset = end;
      }
      row[names[i]!] = value;
      if (also[i] !== undefined) row[also[i]!] = value;
    }
    rows.push(row);
  }
  return rows;
}

/** A field of a binary COPY across its rows: each value's length (-1 for NULL) and the bytes one after another. */
export interface CopyField {
  lengths: Int32Array;
  bytes: Uint8Array;
}

/** parseBinaryCopyFields's first pass: where each field starts and its length, row by row. */
let scratch = { starts: new Int32Array(0), lengths: new Int32Array(0) };
/** Entries: 4 MiB a scratch array at most. */
const SCRATCH_LIMIT = 1 << 20;

/**
 * The fields of a binary COPY of `fields` columns by column, each packed (src/crypto/columns.ts's ByteColumn): what
 * the rewrap hands its crypto threads and builds its compare-and-swap from, with no object or string per row. Text
 * comes as its UTF-8 bytes, an integer as its big-endian bytes, a bytea as itself.
 */
export function parseBinaryCopyFields(data: Buffer, fields: number): { count: number; fields: CopyField[] } {
  if (data.length < HEADER_BYTES + 2 || data.compare(SIGNATURE, 0, SIGNATURE.length, 0, SIGNATURE.length) !== 0) {
    throw new Error('COPY … (FORMAT binary) returned something else than binary COPY data');
  }
  const first = HEADER_BYTES + data.readUInt32BE(SIGNATURE.length + 4); // after the header extension
  // First pass: where each field is, and each column's total size (in scratch arrays kept from call to call: this
  // function is synchronous, and what it returns is copied out of them).
  let capacity = Math.max(256, Math.floor(scratch.starts.length / fields));
  if (scratch.starts.length < capacity * fields)
    scratch = { starts: new Int32Array(capacity * fields), lengths: new Int32Array(capacity * fields) };
  let { starts, lengths } = scratch;
  const totals = new Array<number>(fields).fill(0);
  let count = 0;
  let offset = first;
  for (;;) {
    const n = data.readInt16BE(offset);
    offset += 2;
    if (n === -1) break; // the trailer
    if (n !== fields) throw new Error(`COPY returned a row of ${n} fields, expected ${fields}`);
    if (count === capacity) {
      capacity *= 2;
      const moreStarts = new Int32Array(capacity * fields);
      moreStarts.set(starts);
      starts = moreStarts;
      const moreLengths = new Int32Array(capacity * fields);
      moreLengths.set(lengths);
      lengths = moreLengths;
      scratch = { starts, lengths };
    }
    for (let f = 0; f < fields; f++) {
      const length = data.readInt32BE(offset);
      offset += 4;
      const at = count * fields + f;
      starts[at] = offset;
      lengths[at] = length;
      if (length > 0) {
        if (offset + length > data.length) throw new Error('COPY data ends inside a field');
        offset += length;
        totals[f]! += length;
      }
    }
    count++;
  }
  // Kept for the next call only if it is a batch's size (a read of a whole table does not stay).
  if (starts.length > SCRATCH_LIMIT) scratch = { starts: new Int32Array(0), lengths: new Int32Array(0) };
  // Second pass: each column's bytes, packed.
  const out: CopyField[] = [];
  for (let f = 0; f < fields; f++) {
    const columnLengths = new Int32Array(count);
    const bytes = new Uint8Array(totals[f]!);
    let at = 0;
    for (let row = 0; row < count; row++) {
      const length = lengths[row * fields + f]!;
      columnLengths[row] = length;
      if (length <= 0) continue;
      const start = starts[row * fields + f]!;
      if (length < 64) for (let k = 0; k < length; k++) bytes[at + k] = data[start + k]!;
      else data.copy(bytes, at, start, start + length);
      at += length;
    }
    out.push({ lengths: columnLengths, bytes });
  }
  return { count, fields: out };
}
