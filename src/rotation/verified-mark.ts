// What verify's check of the rows labelled `to` proved, in a form a later step can reuse: every row labelled `to` whose
// current version was written before `mark` (TargetStore.changeMark, taken before the check read a row) opens under
// the KEK `kekId` with `fingerprint`. The retire step's pre-pass of a keyspace whose KEKs are in a remote store (AWS
// KMS, Vault Transit: a request per row, or per batch, against a quota) leaves those rows out instead of trying them
// again under the same KEK: the database says they are the versions verify opened (docs/13, "What verify proved").
// Pure: merging parts, and whether a mark still holds against what the database says now.

/** Verify's proof of the rows labelled `kekId`, or null when a part of the check had none (an older build's part). */
export interface VerifiedUnder {
  kekId: string;
  /** The registry's fingerprint of `kekId` when the check ran: the key that opened the rows. */
  fingerprint: string;
  /** 64-bit transaction id, as text: rows whose xmin is before it were read by the check as they are now. */
  mark: string;
  /**
   * The cluster, timeline, database, server start and relations the mark was read in (TargetStore.markNow); a mark of
   * a build before the server's start was part of it never equals one read now.
   */
  scope: string;
}

/** Where the database stands now: its scope and the next transaction id it will assign (64 bits, as text). */
export interface MarkNow {
  scope: string;
  next: string;
}

/**
 * The check's proof after adding a part's: `sum` is what the check holds so far (`checked` rows), `part` what one part
 * proved. A part without a proof (an older build's), or two parts of different KEKs, keys or databases, leave none;
 * otherwise the older mark, which every part's reads came after.
 */
export function mergeVerified(
  sum: { checked: number; verified?: VerifiedUnder | null },
  part: { verified?: VerifiedUnder | null },
): VerifiedUnder | null {
  const next = part.verified ?? null;
  // A sum with rows but no proof was checked (in part) by a build that took none.
  if (sum.verified === undefined) return sum.checked === 0 ? next : null;
  const held = sum.verified;
  if (held === null || next === null) return null;
  if (held.kekId !== next.kekId || held.fingerprint !== next.fingerprint || held.scope !== next.scope) return null;
  return BigInt(next.mark) < BigInt(held.mark) ? next : held;
}

/**
 * Transaction ids a row's 32-bit xmin is compared within (TargetStore.changedSinceSql): a mark is used only while
 * fewer than this have been assigned since, with a wide margin below 2^31, where the comparison would wrap.
 */
export const MARK_REACH = 2n ** 30n;

/**
 * Why verify's proof can no longer stand for a row's trial under `active` now, or undefined when it can: another KEK
 * or key, another database (restored from a backup into another cluster, failed over to another timeline, dropped and
 * made again), a server started since (a file-level restore of the cluster keeps its identifier, timeline and oids), a transaction counter behind the mark (a point-in-time recovery to before it), or so many transactions
 * since that a row's 32-bit xmin could wrap past it.
 */
export function verifiedFails(
  verified: VerifiedUnder,
  active: { kekId: string; fingerprint?: string | undefined },
  now: MarkNow | undefined,
): string | undefined {
  if (verified.kekId !== active.kekId) return `verify proved '${verified.kekId}', the active KEK is '${active.kekId}'`;
  if (active.fingerprint === undefined || verified.fingerprint !== active.fingerprint) {
    return `the active KEK '${active.kekId}' is not the key verify opened the rows with (fingerprint)`;
  }
  if (now === undefined) return 'the database does not say which cluster and timeline it is';
  if (now.scope !== verified.scope) {
    return `the database is not the one verify read (cluster, timeline, database, the server restarted since or the relations its table reads changed: ${verified.scope} → ${now.scope})`;
  }
  const since = BigInt(now.next) - BigInt(verified.mark);
  if (since < 0n) return 'the database assigns transaction ids behind verify’s mark (restored to an earlier point)';
  if (since >= MARK_REACH)
    return `${since} transactions since verify: past what a row's 32-bit xmin is compared within`;
  return undefined;
}
