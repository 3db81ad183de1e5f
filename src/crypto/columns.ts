// How rows cross to a crypto thread and back: by column, each byte column packed into one buffer. A message of row
// objects costs the sending thread a structured clone per object, and a small Buffer is usually a view of Node's
// 8 KiB pool, which a message would copy whole; columns cost a few arrays and one buffer, moved rather than copied.

/** A column of byte values (null allowed): lengths (-1 = null) and the bytes one after another. */
export interface ByteColumn {
  lengths: Int32Array;
  bytes: Uint8Array;
}

/** Values of one column: text (or null) as they are, or bytes packed. */
export type Column = { kind: 'values'; values: unknown[] } | { kind: 'bytes'; column: ByteColumn };

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
  return column.kind === 'values' ? column.values : unpackByteColumn(column.column);
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
    if (column.kind !== 'bytes') continue;
    buffers.add(column.column.lengths.buffer as ArrayBuffer);
    buffers.add(column.column.bytes.buffer as ArrayBuffer);
  }
  return [...buffers];
}
