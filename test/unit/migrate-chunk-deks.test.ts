// What a chunk of a migrate-dek batch carries to its crypto thread besides its rows: the DEKs given by tenant (those
// provisioned for the batch, or re-read) that its own rows need, not every one of the batch.
import { describe, expect, it } from 'vitest';
import type { ByteColumn } from '../../src/crypto/columns';
import type { MigrateColumns, WrappedDek } from '../../src/rewrap/migrate-chunk';
import { chunkDeks } from '../../src/rewrap/migrate-rows';

function textColumn(values: (string | null)[]): ByteColumn {
  const parts = values.map((v) => (v === null ? null : Buffer.from(v, 'utf8')));
  const bytes = Buffer.concat(parts.flatMap((p) => (p === null ? [] : [p])));
  return { lengths: Int32Array.from(parts.map((p) => (p === null ? -1 : p.length))), bytes: new Uint8Array(bytes) };
}

describe("a migrate-dek chunk's DEKs", () => {
  it("carries the DEKs given by tenant of its own rows that came without one, and no other row's", () => {
    const tenants = ['t-a', 't-b', 't-c', 't-d', 't-b', 't-e'];
    // Rows 1, 3, 4 and 5 came without their DEK row (id NULL): theirs are given by tenant.
    const ids = ['t-a', null, 't-c', null, null, null];
    const rows: MigrateColumns = {
      count: tenants.length,
      tenants: textColumn(tenants),
      values: [textColumn(tenants.map(() => 'v'))],
      dek: { ids: textColumn(ids), labels: textColumn(ids), columns: { count: tenants.length, columns: {} } },
    };
    const dek = (id: string) => ({ $id: id, $label: '1', meta: '{}' }) as WrappedDek;
    const deks = { 't-b': dek('t-b'), 't-d': dek('t-d'), 't-x': dek('t-x'), 't-e': 'tenant t-e has no row' };
    expect(Object.keys(chunkDeks(rows, deks, 0, 3)).sort()).toEqual(['t-b']);
    expect(Object.keys(chunkDeks(rows, deks, 3, 6)).sort()).toEqual(['t-b', 't-d', 't-e']);
    expect(chunkDeks(rows, deks, 3, 6)['t-e']).toBe('tenant t-e has no row');
    // Rows that all came with their DEK carry none.
    expect(chunkDeks(rows, deks, 0, 1)).toEqual({});
  });
});
