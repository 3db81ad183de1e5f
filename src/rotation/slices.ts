/** A tenant-id range (after, until]: after '' is the start, until null the end. */
export interface TenantRange {
  after: string;
  until: string | null;
}

/**
 * Turns boundary tenant ids, in the database's order, into contiguous, non-overlapping ranges that cover every
 * tenant id. (Not re-sorted here: JavaScript compares UTF-16 units, PostgreSQL's "C" collation UTF-8 bytes.)
 */
export function rangesFromBoundaries(boundaries: string[]): TenantRange[] {
  const unique = [...new Set(boundaries)].filter((b) => b !== '');
  const ranges: TenantRange[] = [];
  let after = '';
  for (const boundary of unique) {
    ranges.push({ after, until: boundary });
    after = boundary;
  }
  ranges.push({ after, until: null });
  return ranges;
}
