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

/**
 * The pass a slice part belongs to, read from its progress key (`<run>/pass-<n>/slice-<i>/part-<k>`, and `…/others`),
 * or undefined for a key of another shape. Every pass tries every row still labelled `from`, unreadable ones included:
 * a count of unreadable rows over the run takes the first pass's only.
 */
export function passOfProgressKey(progressKey: string): number | undefined {
  const match = /\/pass-(\d+)\//.exec(progressKey);
  return match ? Number(match[1]) : undefined;
}
