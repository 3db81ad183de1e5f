// Columns as the store's binary COPY (TargetStore.readColumns) hands them to a crypto thread, packed by the test from
// plain values: text as its UTF-8 bytes, bytea as is, NULL as length -1.
import type { ByteColumn, Columns } from '../../src/crypto/columns';

/** Text or bytea values packed into one column. */
export function packed(values: (string | Buffer | null)[]): ByteColumn {
  const parts = values.map((v) => (v === null ? null : typeof v === 'string' ? Buffer.from(v, 'utf8') : v));
  return {
    lengths: Int32Array.from(parts, (p) => (p === null ? -1 : p.length)),
    bytes: new Uint8Array(Buffer.concat(parts.filter((p): p is Buffer => p !== null))),
  };
}

/** `rows` (packRows's columns) with their text values packed as readColumns gives them. */
export function asRead(rows: Columns): Columns {
  const columns: Columns['columns'] = {};
  for (const [name, column] of Object.entries(rows.columns)) {
    columns[name] =
      column.kind === 'values' ? { kind: 'text', column: packed(column.values as (string | null)[]) } : column;
  }
  return { count: rows.count, columns };
}
