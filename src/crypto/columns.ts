// How rows cross to a crypto thread and back: by column, each byte column packed into one buffer. A message of row
// objects costs the sending thread a structured clone per object, and a small Buffer is usually a view of Node's
// 8 KiB pool, which a message would copy whole; columns cost a few arrays and one buffer, moved rather than copied.

/** A column of byte values (null allowed): lengths (-1 = null) and the bytes one after another. */
export interface ByteColumn {
  lengths: Int32Array;
  bytes: Uint8Array;
}

/**
 * Values of one column: text (or null) as they are, bytes packed, or text packed as its UTF-8 bytes (as a binary COPY
 * brings it: src/store/copy-out.ts; made into strings only where they are read).
 */
export type Column =
  { kind: 'values'; values: unknown[] } | { kind: 'bytes'; column: ByteColumn } | { kind: 'text'; column: ByteColumn };

export interface Columns {
  count: number;
  columns: Record<string, Column>;
}

function packByteColumn(values: unknown[]): ByteColumn {
  const lengths = new Int32Array(values.length);
  let total = 0;
  values.forEach((value, i) => {
    const length = value instanceof Uint8Array ? value.length : -1;
    lengths[i] = length;
    if (length > 0) total += length;
  });
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const value of values) {
    if (value instanceof Uint8Array) {
      bytes.set(value, offset);
      offset += value.length;
    }
  }
  return { lengths, bytes };
}

/** The strings of a packed text column (null for NULL). */
export function unpackTextColumn({ lengths, bytes }: ByteColumn): (string | null)[] {
  const out = new Array<string | null>(lengths.length);
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  let offset = 0;
  for (let i = 0; i < lengths.length; i++) {
    const length = lengths[i]!;
    if (length < 0) {
      out[i] = null;
      continue;
    }
    out[i] = buffer.toString('utf8', offset, offset + length);
    offset += length;
  }
  return out;
}

function unpackByteColumn({ lengths, bytes }: ByteColumn): (Buffer | null)[] {
  const out = new Array<Buffer | null>(lengths.length);
  let offset = 0;
  for (let i = 0; i < lengths.length; i++) {
    const length = lengths[i]!;
    if (length < 0) {
      out[i] = null;
      continue;
    }
    out[i] = Buffer.from(bytes.buffer, bytes.byteOffset + offset, length);
    offset += length;
  }
  return out;
}

/** One column's values: packed bytes when every value is bytes or null, else as they are. */
export function packColumn(values: unknown[]): Column {
  const bytes =
    values.some((v) => v instanceof Uint8Array) && values.every((v) => v === null || v instanceof Uint8Array);
  return bytes ? { kind: 'bytes', column: packByteColumn(values) } : { kind: 'values', values };
}

export function unpackColumn(column: Column): unknown[] {
  if (column.kind === 'values') return column.values;
  return column.kind === 'bytes' ? unpackByteColumn(column.column) : unpackTextColumn(column.column);
}

/** The named columns of `rows` (all of them when not named; the rows all have the same keys). */
export function packRows(rows: readonly Record<string, unknown>[], names?: readonly string[]): Columns {
  names ??= rows.length === 0 ? [] : Object.keys(rows[0]!);
  const columns: Record<string, Column> = {};
  for (const name of names) columns[name] = packColumn(rows.map((row) => row[name]));
  return { count: rows.length, columns };
}

export function unpackRows({ count, columns }: Columns): Record<string, unknown>[] {
  const unpacked = Object.entries(columns).map(([name, column]) => [name, unpackColumn(column)] as const);
  return Array.from({ length: count }, (_, i) => {
    const row: Record<string, unknown> = {};
    for (const [name, values] of unpacked) row[name] = values[i];
    return row;
  });
}

/** The buffers a message may move instead of copying. */
export function transferables(columns: Record<string, Column>): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>();
  for (const column of Object.values(columns)) {
    if (column.kind === 'values') continue;
    buffers.add(column.column.lengths.buffer as ArrayBuffer);
    buffers.add(column.column.bytes.buffer as ArrayBuffer);
  }
  return [...buffers];
}

/** Rows `start` to `end` (exclusive) of a packed column, in buffers of their own (to be moved to a thread). */
export function sliceColumn(column: Column, start: number, end: number): Column {
  if (column.kind === 'values') return { kind: 'values', values: column.values.slice(start, end) };
  const { lengths, bytes } = column.column;
  let from = 0;
  for (let i = 0; i < start; i++) from += Math.max(0, lengths[i]!);
  let to = from;
  for (let i = start; i < end; i++) to += Math.max(0, lengths[i]!);
  return { kind: column.kind, column: { lengths: lengths.slice(start, end), bytes: bytes.slice(from, to) } };
}

/** Packed columns one after another (the chunks of a batch, back from their threads). */
export function concatColumns(parts: Column[]): Column {
  const first = parts[0];
  if (!first) return { kind: 'values', values: [] };
  if (first.kind === 'values') return { kind: 'values', values: parts.flatMap((p) => (p as typeof first).values) };
  const columns = parts.map((p) => (p as typeof first).column);
  const lengths = new Int32Array(columns.reduce((n, c) => n + c.lengths.length, 0));
  const bytes = new Uint8Array(columns.reduce((n, c) => n + c.bytes.length, 0));
  let rows = 0;
  let offset = 0;
  for (const c of columns) {
    lengths.set(c.lengths, rows);
    bytes.set(c.bytes, offset);
    rows += c.lengths.length;
    offset += c.bytes.length;
  }
  return { kind: first.kind, column: { lengths, bytes } };
}
