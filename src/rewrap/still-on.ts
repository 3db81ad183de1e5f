import type { Pool, PoolClient } from 'pg';
import type { EngineKek as ResolvedKek } from '../keyring/cipher';
import type { ProvedUnder, RowWrite, TargetRow, TargetStore } from '../store/target-store';
import { createProgress } from '../store/rewrap-progress';
import type { TenantFailure } from './rewrap-slice';
import type { RowCrypto } from '../crypto/row-crypto';
import { emptyCounters } from './counters';
import { addProofs, emptyProof, NAMED_ROWS, type LabelProof } from '../rotation/label-proof';

export type { LabelProof } from '../rotation/label-proof';

/** Rows labelled with a KEK, by what their value proves: a label can lie. */
export interface LabelledRows {
  /** Rows whose value is under `from`: they still need it. */
  onFrom: number;
  /** Rows whose value is under `to` although their label says `from` (Mycelium's lazily provisioned DEKs). */
  mislabelled: number;
  /** Rows that open under neither: they keep `from` from retiring. */
  unreadable: TenantFailure[];
}

const BATCH = 2_000;
const LISTED = 20;

/**
 * Classifies every row labelled `from` by trial decryption. Whether `from` may retire depends on which key the values
 * are under, not on their labels: a row labelled `from` that opens under `to` does not need `from`.
 */
export async function rowsLabelled(
  store: TargetStore,
  client: Pool | PoolClient,
  crypto: RowCrypto,
  from: ResolvedKek,
  to: ResolvedKek,
  onlyId?: string,
): Promise<LabelledRows> {
  const result: LabelledRows = { onFrom: 0, mislabelled: 0, unreadable: [] };
  let after = '';
  for (;;) {
    const rows = await store.readBatch(
      client,
      { kind: 'label', kekId: from.kekId },
      { after, until: null },
      BATCH,
      onlyId,
    );
    if (rows.length === 0) break;
    const underFrom = await crypto.check(store.codec, from, rows);
    const notOnFrom = rows.flatMap((row, i) => (underFrom[i] === undefined ? [] : [{ row, reason: underFrom[i] }]));
    const underTo = await crypto.check(
      store.codec,
      to,
      notOnFrom.map(({ row }) => row),
    );
    result.onFrom += rows.length - notOnFrom.length;
    notOnFrom.forEach(({ row, reason }, i) => {
      if (underTo[i] === undefined) {
        result.mislabelled += 1;
        return;
      }
      // Opens under neither: it keeps `from` from retiring, and is named (the first few).
      result.onFrom += 1;
      if (result.unreadable.length < LISTED) result.unreadable.push({ tenantId: row.$id, reason });
    });
    if (onlyId !== undefined) break;
    after = rows[rows.length - 1]!.$id;
  }
  return result;
}

/**
 * The KEKs a proof tries the rows labelled `label` under. A row that opens under one of them does not need `label`:
 * it is sealed again under `active` and labelled with it. `labelKek` is `label`'s own KEK while it may still unwrap
 * (before retire): a row that opens under it needs it, and is told apart from one that opens under nothing.
 */
export interface ProofKeys {
  label: string;
  /** The active KEK: every row a proof moves ends under it. */
  active: ResolvedKek;
  /** Other KEKs the registry lets unwrap (decrypt-only) that this worker holds, tried after `active`. */
  others: ResolvedKek[];
  labelKek?: ResolvedKek;
  /**
   * Keys this worker holds that the registry does not record (a KEK the application uses that rekey never rotated:
   * Talos's third `key_id`, a generation rekey has not met), none with `label`'s registered fingerprint. Never used to
   * move a row; a row that opens under one is under another key than `label`'s (proveRowsNotLabelled).
   */
  unrecorded?: ResolvedKek[];
}

export interface ProofOptions {
  /** Exclusive lower bound of the ids still to prove ('' = from the start). */
  after: string;
  batchSize: number;
  /** Stop at the first batch boundary after this long (at least one batch); absent: prove every row. */
  timeBudgetMs?: number;
  /** Counts the relabelled rows in rekey.rewrap_progress, in the statement that writes them. */
  progressKey?: string;
  /** A previous attempt's last checkpoint: go on after its cursor, with its sums. */
  resumeFrom?: ProofCheckpoint;
  /** After every batch (heartbeat here). */
  onBatch?(checkpoint: ProofCheckpoint): void;
  /** Checked before every batch: true stops at this batch boundary. */
  shouldStop?(): boolean;
  /** Only the rows written since this mark (TargetStore.changeMark): the locked step after a pre-pass. */
  changedSince?: string;
}

export interface ProofCheckpoint {
  cursor: string;
  proof: LabelProof;
}

export interface ProofResult extends ProofCheckpoint {
  /** No row labelled `label` is left after `cursor`. */
  done: boolean;
}

/** The registry states in which the KEK a proof moves rows to may wrap. */
const MOVED_UNDER: readonly string[] = ['active'];
const CAS_RETRIES = 3;

/**
 * Proves the rows labelled `keys.label`, in id order (keyset pagination, no cap): each is tried under the active KEK,
 * then the other usable ones. A row that opens is sealed again under the active KEK and labelled with it, by a
 * compare-and-swap that writes it only if it is still as read; a row that opens under none needs `label` and is
 * counted (the first few named). Rows written or relabelled behind the cursor meanwhile are the next proof's.
 */
export async function proveLabelled(
  store: TargetStore,
  client: Pool | PoolClient,
  crypto: RowCrypto,
  keys: ProofKeys,
  options: ProofOptions,
): Promise<ProofResult> {
  const started = Date.now();
  let cursor = options.resumeFrom?.cursor ?? options.after;
  let proof = options.resumeFrom?.proof ?? emptyProof();
  if (options.progressKey !== undefined) {
    await createProgress(client, store.target.name, options.progressKey, options.after, emptyCounters());
  }
  for (let batches = 0; ; batches++) {
    if (options.shouldStop?.()) return { cursor, proof, done: false };
    if (batches > 0 && options.timeBudgetMs !== undefined && Date.now() - started >= options.timeBudgetMs) {
      return { cursor, proof, done: false };
    }
    const rows = await store.readBatch(
      client,
      {
        kind: 'label',
        kekId: keys.label,
        ...(options.changedSince !== undefined && { changedSince: options.changedSince }),
      },
      { after: cursor, until: null },
      options.batchSize,
    );
    if (rows.length === 0) return { cursor, proof, done: true };
    proof = addProofs(proof, await proveRows(store, client, crypto, keys, rows, options.progressKey));
    cursor = rows[rows.length - 1]!.$id;
    options.onBatch?.({ cursor, proof });
  }
}

/** One batch: moves what opens under a usable KEK, retrying rows a writer changed meanwhile; counts the rest. */
async function proveRows(
  store: TargetStore,
  client: Pool | PoolClient,
  crypto: RowCrypto,
  keys: ProofKeys,
  batch: TargetRow[],
  progressKey: string | undefined,
): Promise<LabelProof> {
  const proof = { ...emptyProof(), tried: batch.length };
  let rows = batch;
  for (let attempt = 0; rows.length > 0; attempt++) {
    let lost: string[] = [];
    let remaining = rows;
    for (const kek of [keys.active, ...keys.others]) {
      if (remaining.length === 0) break;
      const moved = await moveUnderActive(store, client, crypto, keys, kek, remaining, progressKey);
      proof.relabelled += moved.written;
      lost = [...lost, ...moved.lost];
      remaining = moved.notOpened;
    }
    const needed = remaining;
    await countNeeded(store, crypto, keys, needed, proof);
    if (lost.length === 0) break;
    if (attempt >= CAS_RETRIES) {
      proof.contended += lost.length;
      break;
    }
    // A writer changed these rows since they were read: those still labelled `label` are tried again as they are now.
    rows = (await store.readByIds(client, lost)).filter((row) => row.$label === keys.label);
  }
  return proof;
}

/**
 * The rows that open under `kek`, sealed again under the active KEK and labelled with it, in one compare-and-swap.
 * Returns how many it wrote, the ids that lost to a writer, and the rows that do not open under `kek`.
 */
async function moveUnderActive(
  store: TargetStore,
  client: Pool | PoolClient,
  crypto: RowCrypto,
  keys: ProofKeys,
  kek: ResolvedKek,
  rows: TargetRow[],
  progressKey: string | undefined,
): Promise<{ written: number; lost: string[]; notOpened: TargetRow[] }> {
  // `others`: a row that opens under `kek` is written under the active KEK with its label; the rest are left alone.
  const result = await crypto.rewrap(store.codec, kek, keys.active, rows, { others: true, dryRun: false });
  const opened = new Set(result.writes.map((w) => w.index));
  const notOpened = rows.filter((_, i) => !opened.has(i));
  if (result.writes.length === 0) return { written: 0, lost: [], notOpened };
  const writes: RowWrite[] = result.writes.map((w) => ({
    id: rows[w.index]!.$id,
    row: rows[w.index]!,
    values: w.values,
    relabel: true,
  }));
  const outcome = await store.compareAndSwap(
    client,
    keys.label,
    keys.active.kekId,
    writes,
    MOVED_UNDER,
    progressKey === undefined ? undefined : { progressKey, cursor: null, failed: 0 },
  );
  return { written: outcome.written, lost: [...outcome.lost], notOpened };
}

/** Rows no usable KEK opens: they need `label`. Says why for the first few (under `label` itself, where it can tell). */
async function countNeeded(
  store: TargetStore,
  crypto: RowCrypto,
  keys: ProofKeys,
  rows: TargetRow[],
  proof: LabelProof,
): Promise<void> {
  if (rows.length === 0) return;
  proof.needed += rows.length;
  const named = rows.slice(0, Math.max(0, NAMED_ROWS - proof.neededRows.length));
  if (named.length === 0) return;
  const usable = [keys.active, ...keys.others].map((k) => `'${k.kekId}'`).join(', ');
  const underLabel = keys.labelKek ? await crypto.check(store.codec, keys.labelKek, named) : [];
  named.forEach((row, i) => {
    const reason =
      keys.labelKek && underLabel[i] === undefined
        ? `its value is under '${keys.label}'`
        : `it opens under none of ${usable}${keys.labelKek ? ` nor '${keys.label}' (${underLabel[i]})` : ''}`;
    proof.neededRows.push({ tenantId: row.$id, reason });
  });
}

/**
 * The rows a label does not tie to `keys.label` that may still need it, proved under the registry row's lock at
 * retire and at destroy: every row with a value NOT labelled `keys.label` (the active KEK's, another KEK's, the label
 * column's constant default, NULL), in id order, streamed (no cap). Each is tried under the active KEK, then the other
 * usable ones, then the keys this worker holds that the registry does not record (`unrecorded`, none of them
 * `keys.label`'s). One that opens under none of them needs `keys.label` when its value opens under `keys.label`
 * (`labelKek`, while the KEK may still unwrap), or when nothing tells it apart from a row that does: its label is NULL,
 * the column's default (`labelDefault`: Mycelium's gateway writes 1 whatever key wrapped the DEK), or a KEK whose key
 * it was just tried under. A row labelled with a KEK this worker holds no key for that does not open under
 * `keys.label` is that KEK's (a generation the application uses that rekey never held). Counted and named, with its
 * label. Reads only: such a row is not rewritten here (its label may be the application's own), so nothing is counted
 * twice on a retry. Heartbeat in `onBatch`.
 */
export async function proveRowsNotLabelled(
  store: TargetStore,
  client: Pool | PoolClient,
  crypto: RowCrypto,
  keys: ProofKeys,
  options: NotLabelledOptions,
): Promise<LabelProof> {
  return (await proveRowsNotLabelledFrom(store, client, crypto, keys, options)).proof;
}

export interface NotLabelledOptions {
  batchSize: number;
  labelDefault?: string;
  /** Exclusive lower bound of the ids still to prove ('' or absent = from the start). */
  after?: string;
  /** What the proof found before `after` (a resumed pre-pass): added to. */
  resumeFrom?: LabelProof;
  /** Only the rows written since this mark (TargetStore.changeMark): the locked step after a pre-pass. */
  changedSince?: string;
  /**
   * Rows an earlier check proved under the active KEK and unchanged since (Scan's provedUnder): left out (retire's
   * pre-pass of a KMS or Transit keyspace after verify).
   */
  provedUnder?: ProvedUnder;
  /** Stop after the first batch that finds a row that needs `keys.label` (a pre-pass: the locked step proves all). */
  stopWhenNeeded?: boolean;
  /** After every batch (heartbeat here), with the cursor and the sums so far (`tried`: the rows read). */
  onBatch?(checkpoint: ProofCheckpoint): void;
}

/** proveRowsNotLabelled, with where it stopped: `done` unless stopWhenNeeded stopped it. */
export async function proveRowsNotLabelledFrom(
  store: TargetStore,
  client: Pool | PoolClient,
  crypto: RowCrypto,
  keys: ProofKeys,
  options: NotLabelledOptions,
): Promise<ProofResult> {
  const proof = options.resumeFrom
    ? { ...options.resumeFrom, neededRows: [...options.resumeFrom.neededRows] }
    : emptyProof();
  // A key that is not `label`'s proves a row that opens under it does not need `label`, recorded or not.
  const tried = [keys.active, ...keys.others, ...(keys.unrecorded ?? [])];
  const triedIds = new Set(tried.map((k) => k.kekId));
  const ids = tried.map((k) => `'${k.kekId}'`).join(', ');
  const described = (row: TargetRow) =>
    row.$label === null || row.$label === undefined ? 'no label (NULL)' : `label '${row.$label}'`;
  let cursor = options.after ?? '';
  for (;;) {
    const rows = await store.readBatch(
      client,
      {
        kind: 'not-label',
        kekId: keys.label,
        ...(options.changedSince !== undefined && { changedSince: options.changedSince }),
        ...(options.provedUnder !== undefined && { provedUnder: options.provedUnder }),
      },
      { after: cursor, until: null },
      options.batchSize,
    );
    if (rows.length === 0) return { cursor, proof, done: true };
    proof.tried += rows.length;
    let remaining = rows;
    for (const kek of tried) {
      if (remaining.length === 0) break;
      const opened = await crypto.check(store.codec, kek, remaining);
      remaining = remaining.filter((_, i) => opened[i] !== undefined);
    }
    const underLabel =
      keys.labelKek && remaining.length > 0 ? await crypto.check(store.codec, keys.labelKek, remaining) : [];
    const needed: { row: TargetRow; reason: string }[] = [];
    remaining.forEach((row, i) => {
      if (keys.labelKek && underLabel[i] === undefined) {
        needed.push({ row, reason: `its ${described(row)} says otherwise, but its value is under '${keys.label}'` });
        return;
      }
      const label = row.$label as string | null | undefined;
      const unknown = label === null || label === undefined || label === options.labelDefault || triedIds.has(label);
      if (!unknown) return; // labelled with a KEK held nowhere here, and not under `label`: that KEK's row
      const why = keys.labelKek ? ` nor '${keys.label}' (${underLabel[i]})` : '';
      needed.push({ row, reason: `${described(row)}: it opens under none of ${ids}${why}` });
    });
    proof.needed += needed.length;
    for (const { row, reason } of needed.slice(0, Math.max(0, NAMED_ROWS - proof.neededRows.length))) {
      proof.neededRows.push({ tenantId: row.$id, reason });
    }
    cursor = rows[rows.length - 1]!.$id;
    // A copy: a heartbeat may be sent after this batch, and the next batch adds to `proof`.
    options.onBatch?.({ cursor, proof: { ...proof, neededRows: [...proof.neededRows] } });
    if (options.stopWhenNeeded && proof.needed > 0) return { cursor, proof, done: false };
  }
}
