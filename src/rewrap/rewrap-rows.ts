import { randomBytes } from 'node:crypto';
import { NONCE_BYTES, type Codec, type ColumnValue, type Row } from '../codec/sealed-format';
import { releaseKey, scheduleKey, type AeadKey } from '../crypto/aes-gcm';
import { UnreadableValueError } from '../errors';
import type { CallWindow } from '../crypto/request-pacer';

/** A KEK for one unit of work: its bytes are the caller's, who zeroizes them. */
export interface RowKek {
  kekId: string;
  key: Buffer;
  /** The registry's fingerprint: how a store that keeps its keys (KMS) knows which key to use. */
  fingerprint?: string;
}

export interface RewrapRowsOptions {
  /**
   * false: the rows are labelled `from`; one that opens under `to` instead is relabelled, one that opens under
   * neither fails. true: the rows are labelled with neither KEK; those that open under `from` move (relabelled), the
   * rest are on a third KEK and are left alone.
   */
  others: boolean;
  /** Decrypt only: nothing is sealed, `values` stay empty. */
  dryRun: boolean;
  /**
   * A remote key store's calls: the slots they take, shared with the slice's other batches in flight
   * (RowCrypto.pipeline). Without it the batch's calls have a window of their own.
   */
  calls?: CallWindow;
}

export interface RowRewrap {
  /** The row's position in the input. */
  index: number;
  /** New values for the codec's write columns (empty in a dry run). */
  values: ColumnValue[];
  relabel: boolean;
}

export interface RewrapRowsResult {
  writes: RowRewrap[];
  /** Rows that opened under neither KEK, with why (under `from`); they are never written. */
  failures: { index: number; reason: string }[];
  /** Calls made to a remote key store (KMS) for the batch; absent for local keys. */
  requests?: number;
}

/** For each row, undefined if its value opens under `kek`, else why not. Every plaintext is zeroized at once. */
export function openReasons(codec: Codec, kek: RowKek, rows: readonly Row[]): (string | undefined)[] {
  const key = scheduleKey(kek.key);
  try {
    return rows.map((row) => {
      try {
        codec.open(key, row, kek.kekId).fill(0);
        return undefined;
      } catch (err) {
        if (err instanceof UnreadableValueError) return err.reason;
        throw err;
      }
    });
  } finally {
    releaseKey(key);
  }
}

/**
 * The crypto of a rewrap batch, and nothing else: each row is opened with `from` (or found already under `to`) and
 * sealed with `to`; every plaintext is zeroized as soon as it is sealed. Runs in the activity's thread or in a crypto
 * thread (src/crypto/row-crypto.ts), with the same result.
 */
export function rewrapRows(
  codec: Codec,
  from: RowKek,
  to: RowKek,
  rows: readonly Row[],
  options: RewrapRowsOptions,
): RewrapRowsResult {
  // One key schedule per KEK for the whole chunk (the native addon), released (zeroized) when it is done.
  const fromKey = scheduleKey(from.key);
  const toKey = scheduleKey(to.key);
  try {
    return rewrapWith(codec, { kekId: from.kekId, key: fromKey }, { kekId: to.kekId, key: toKey }, rows, options);
  } finally {
    releaseKey(fromKey);
    releaseKey(toKey);
  }
}

/** A KEK made ready for many values (scheduleKey): what rewrapOne works with. */
export interface ScheduledKek {
  kekId: string;
  key: AeadKey;
}

/** What became of one row: written (new values, or none in a dry run), failed (why), or left alone (undefined). */
export type RowOutcome = { values: ColumnValue[]; relabel: boolean } | { reason: string } | undefined;

/**
 * Row `i` of a chunk whose columns are unpacked by name (crypto/columns.ts `unpackColumn`), through rewrapOne with the
 * row's own nonce, the `i`-th 12 bytes of `nonces`: the by-row path of the column rewraps (src/crypto/column-rewrap.ts,
 * and the rows the native chunk call leaves, src/crypto/native-chunk.ts).
 */
export function rewrapOneAt(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  unpacked: readonly (readonly [string, readonly unknown[]])[],
  i: number,
  options: RewrapRowsOptions,
  nonces: Buffer,
): RowOutcome {
  const row: Record<string, unknown> = {};
  for (const [name, column] of unpacked) row[name] = column[i];
  return rewrapOne(codec, from, to, row, options, nonces.subarray(i * NONCE_BYTES, (i + 1) * NONCE_BYTES));
}

/**
 * One row of a rewrap: opened with `from` (or found already under `to`), sealed with `to` under `nonce`; the
 * plaintext is zeroized once sealed.
 */
export function rewrapOne(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  row: Row,
  options: RewrapRowsOptions,
  nonce: Buffer,
): RowOutcome {
  let plaintext: Buffer;
  let relabel = false;
  try {
    plaintext = codec.open(from.key, row, from.kekId);
    // Labelled with another KEK, but under `from`: it moves with the rest, and its label is put right.
    relabel = options.others;
  } catch (err) {
    if (!(err instanceof UnreadableValueError)) throw err;
    // A row on a third KEK that says so is left alone.
    if (options.others) return undefined;
    try {
      plaintext = codec.open(to.key, row, to.kekId);
      relabel = true;
    } catch (second) {
      if (!(second instanceof UnreadableValueError)) throw second;
      return { reason: err.reason };
    }
  }
  const values = options.dryRun ? [] : codec.seal(to.key, plaintext, row, to.kekId, nonce);
  plaintext.fill(0);
  return { values, relabel };
}

function rewrapWith(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  rows: readonly Row[],
  options: RewrapRowsOptions,
): RewrapRowsResult {
  const nonces = options.dryRun ? Buffer.alloc(0) : randomBytes(NONCE_BYTES * rows.length);
  const writes: RowRewrap[] = [];
  const failures: { index: number; reason: string }[] = [];
  for (let i = 0; i < rows.length; i++) {
    const outcome = rewrapOne(
      codec,
      from,
      to,
      rows[i]!,
      options,
      nonces.subarray(i * NONCE_BYTES, (i + 1) * NONCE_BYTES),
    );
    if (outcome === undefined) continue;
    if ('reason' in outcome) failures.push({ index: i, reason: outcome.reason });
    else writes.push({ index: i, values: outcome.values, relabel: outcome.relabel });
  }
  return { writes, failures };
}
