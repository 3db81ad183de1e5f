// Moves the legacy values of a group of fields of one table (see RowFieldsStore) to their current form, row by row:
// each row read once with all its legacy fields and its tenant's DEK row (one statement per batch), the DEK unwrapped
// once per tenant and chunk, every field opened under the KEK and sealed under the DEK, and the row written once, only
// if every field it writes still holds what was read. The crypto (src/rewrap/migrate-chunk.ts) runs on the
// rotation's crypto threads when the worker has them (the batch split over them by column, as the rotation's), with
// the native AES-GCM when the addon is in use. As in the rotation, a batch's write overlaps the next batch's read and
// crypto (two connections), so a part holds at most two batches of rows: its memory is set by the batch size, not by
// the table. A tenant without a DEK gets one first; a value that does not decrypt is reported, counted, and never
// written (the row's other fields still are).
import { randomBytes } from 'node:crypto';
import type { PoolClient } from 'pg';
import { KEY_BYTES, NONCE_BYTES } from '../codec/sealed-format';
import { concatColumns, sliceColumn, transferables, type ByteColumn, type Column } from '../crypto/columns';
import { releaseKey, scheduleKey } from '../crypto/aes-gcm';
import type { ThreadedRowCrypto } from '../crypto/row-crypto';
import type { EngineKek as ResolvedKek } from '../keyring/cipher';
import { checkout } from '../store/connect';
import { RowFieldsStore, type FieldsBatch } from '../store/row-fields-store';
import type { TargetRow, TargetStore } from '../store/target-store';
import { addFieldCounters, emptyFieldCounters, type FieldCounters } from './field-counters';
import {
  migrateChunk,
  WOULD_PROVISION,
  type MigrateChunkResult,
  type MigrateChunkTask,
  type MigrateColumns,
  type WrappedDek,
} from './migrate-chunk';

/** A value that was not migrated, and why. */
export interface FieldFailure {
  /** `public.user.mfa → totp.enabled.secret` */
  where: string;
  row: string;
  field: string;
  reason: string;
}

export interface RowSliceInput {
  after: string;
  until: string | null;
  tenant?: string;
  batchSize: number;
  dryRun: boolean;
  timeBudgetMs?: number;
  /** The part's key: each field's progress row is `<progressKey>/field-<index in the target>`. */
  progressKey: string;
  /** Each field's progress row, when not the above (a part of one field, planned before rows: the part's own key). */
  progressKeys?: string[];
  resumeFrom?: RowCheckpoint;
  countExisting: boolean;
}

export interface RowCheckpoint {
  cursor: string;
  /** By field of the group, in its order. */
  counters: FieldCounters[];
}

export interface RowSliceResult extends RowCheckpoint {
  done: boolean;
  failures: FieldFailure[];
}

export interface RowSliceDependencies {
  rows: RowFieldsStore;
  /** The fields' indexes in the target, in the group's order (they name the progress rows). */
  fieldIndexes: number[];
  deks: TargetStore;
  /** The KEK new DEKs are wrapped with (the active one), then any other held KEK: tried in order. */
  keks: ResolvedKek[];
  /** The worker's crypto threads; absent: the crypto runs in this thread. */
  threads?: ThreadedRowCrypto;
}

const MAX_LISTED = 100;
/** Rows below this go to one thread: splitting a small batch costs more in messages than it saves. */
const MIN_CHUNK_ROWS = 64;

export async function migrateRowSlice(
  deps: RowSliceDependencies,
  input: RowSliceInput,
  hooks: { onBatch?(checkpoint: RowCheckpoint): void; shouldStop?(): boolean } = {},
): Promise<RowSliceResult> {
  const reader = await checkout(deps.rows.db);
  let writer: Awaited<ReturnType<typeof checkout>> | undefined;
  let failure: Error | undefined;
  try {
    writer = await checkout(deps.rows.db);
    return await new RowSliceRun(deps, input, hooks, reader, writer).run();
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    // After a failure the connections may be broken: the pool discards them instead of handing them out again.
    reader.release(failure);
    writer?.release(failure);
  }
}

/** The text of packed value `index` (null for NULL). */
function textAt({ lengths, bytes }: ByteColumn, index: number): string | null {
  let offset = 0;
  for (let i = 0; i < index; i++) offset += Math.max(0, lengths[i]!);
  const length = lengths[index]!;
  return length < 0 ? null : Buffer.from(bytes.buffer, bytes.byteOffset + offset, length).toString('utf8');
}

/** Each packed value's text, for the indexes asked (a Map: index → text). */
function textsAt({ lengths, bytes }: ByteColumn, indexes: Iterable<number>): Map<number, string | null> {
  const wanted = new Set(indexes);
  const out = new Map<number, string | null>();
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  let offset = 0;
  for (let i = 0; i < lengths.length && out.size < wanted.size; i++) {
    const length = lengths[i]!;
    if (wanted.has(i)) out.set(i, length < 0 ? null : buffer.toString('utf8', offset, offset + length));
    if (length > 0) offset += length;
  }
  return out;
}

/** Rows `start` to `end` of a batch's columns, in buffers of their own (to be moved to a thread). */
function sliceRows(rows: MigrateColumns, start: number, end: number): MigrateColumns {
  // A column shared by two names (the DEK's id, which its codec may read too) is sliced once.
  const sliced = new Map<ByteColumn, ByteColumn>();
  const byte = (column: ByteColumn): ByteColumn => {
    let part = sliced.get(column);
    if (!part) {
      part = (sliceColumn({ kind: 'bytes', column }, start, end) as { column: ByteColumn }).column;
      sliced.set(column, part);
    }
    return part;
  };
  const columns: Record<string, Column> = {};
  for (const [name, column] of Object.entries(rows.dek.columns.columns)) {
    columns[name] =
      column.kind === 'values' ? sliceColumn(column, start, end) : { kind: column.kind, column: byte(column.column) };
  }
  return {
    count: end - start,
    tenants: byte(rows.tenants),
    values: rows.values.map(byte),
    dek: { ids: byte(rows.dek.ids), labels: byte(rows.dek.labels), columns: { count: end - start, columns } },
  };
}

/** The buffers of a chunk's columns, each once. */
function chunkTransferables(rows: MigrateColumns): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>(transferables(rows.dek.columns.columns));
  for (const column of [rows.tenants, rows.dek.ids, rows.dek.labels, ...rows.values]) {
    buffers.add(column.lengths.buffer as ArrayBuffer);
    buffers.add(column.bytes.buffer as ArrayBuffer);
  }
  return [...buffers];
}

/**
 * The DEKs given by tenant (`deks`: provisioned for this batch, or re-read) that rows `start` to `end` need: those of
 * its rows whose DEK did not come with the batch. A chunk's message carries these alone, not the whole batch's.
 */
export function chunkDeks(
  rows: MigrateColumns,
  deks: Record<string, WrappedDek | string>,
  start: number,
  end: number,
): Record<string, WrappedDek | string> {
  const without: number[] = [];
  for (let i = start; i < end; i++) if (rows.dek.ids.lengths[i]! < 0) without.push(i);
  const own: Record<string, WrappedDek | string> = {};
  if (without.length === 0) return own;
  for (const tenant of textsAt(rows.tenants, without).values()) {
    if (tenant !== null && Object.hasOwn(deks, tenant)) own[tenant] = deks[tenant]!;
  }
  return own;
}

/** The crypto of one batch: in this thread, or split over the crypto threads by column (key copies moved to each). */
async function sealBatch(
  deps: RowSliceDependencies,
  rows: MigrateColumns,
  deks: Record<string, WrappedDek | string>,
  dryRun: boolean,
): Promise<MigrateChunkResult> {
  const { threads } = deps;
  const keks = deps.keks.map((k) => ({ kekId: k.kekId, key: k.key }));
  const fields = deps.rows.fields;
  if (!threads) {
    const codecs = { dek: deps.deks.codec, legacy: fields.map((f) => f.legacy), current: fields.map((f) => f.current) };
    return migrateChunk(codecs, { keks, rows, deks, dryRun });
  }
  const formats = {
    dek: deps.deks.codec.format,
    legacy: fields.map((f) => f.legacy.format),
    current: fields.map((f) => f.current.format),
  };
  const chunks = Math.max(1, Math.min(threads.threads, Math.ceil(rows.count / MIN_CHUNK_ROWS)));
  const size = Math.ceil(rows.count / chunks);
  const parts = await Promise.all(
    Array.from({ length: chunks }, async (_, c) => {
      const start = c * size;
      const end = Math.min(rows.count, start + size);
      const chunk = sliceRows(rows, start, end);
      const own = chunkDeks(rows, deks, start, end);
      const copies = keks.map((k) => {
        const key = new ArrayBuffer(k.key.length);
        new Uint8Array(key).set(k.key);
        return { kekId: k.kekId, key };
      });
      const task: MigrateChunkTask = { formats, keks: copies, rows: chunk, deks: own, dryRun };
      try {
        const result = await threads.runTask<MigrateChunkResult>('migrateChunk', task, [
          ...copies.map((k) => k.key),
          ...chunkTransferables(chunk),
        ]);
        return { result, start };
      } finally {
        // Moved: detached and empty. Not moved (the pool refused the task): zeroized here.
        for (const { key } of copies) if (key.byteLength > 0) new Uint8Array(key).fill(0);
      }
    }),
  );
  if (parts.length === 1) return parts[0]!.result;
  const indexes = new Int32Array(parts.reduce((n, p) => n + p.result.indexes.length, 0));
  let at = 0;
  for (const { result, start } of parts) {
    for (let i = 0; i < result.indexes.length; i++) indexes[at + i] = result.indexes[i]! + start;
    at += result.indexes.length;
  }
  const concat = (columns: ByteColumn[]) =>
    (concatColumns(columns.map((column) => ({ kind: 'text', column }))) as { column: ByteColumn }).column;
  return {
    indexes,
    values: fields.map((_, f) => concat(parts.map((p) => p.result.values[f]!))),
    unreadable: fields.map((_, f) => parts.reduce((n, p) => n + p.result.unreadable[f]!, 0)),
    failures: parts.flatMap((p) => p.result.failures.map((x) => ({ ...x, index: x.index + p.start }))),
  };
}

class RowSliceRun {
  private counters: FieldCounters[];
  private cursor: string;
  private readonly failures: FieldFailure[] = [];
  private readonly keys: string[];

  constructor(
    private readonly deps: RowSliceDependencies,
    private readonly input: RowSliceInput,
    private readonly hooks: { onBatch?(checkpoint: RowCheckpoint): void; shouldStop?(): boolean },
    private readonly reader: PoolClient,
    private readonly writer: PoolClient,
  ) {
    this.cursor = input.after;
    this.counters = deps.rows.fields.map(() => emptyFieldCounters());
    this.keys = input.progressKeys ?? deps.fieldIndexes.map((i) => RowFieldsStore.progressKey(input.progressKey, i));
  }

  async run(): Promise<RowSliceResult> {
    const { rows: store, deks } = this.deps;
    const { input } = this;
    const started = Date.now();
    if (await this.resume()) return this.result(true);
    let done = false;
    let pendingWrite: Promise<void> = Promise.resolve();
    // Where the next read starts: past the batch just read, whose write may not have committed yet (this.cursor).
    let next = this.cursor;
    try {
      // At least one batch per attempt, whatever the budget: a part that stopped before its first batch would be
      // continued from the same cursor, again and again, without ever moving.
      for (let batches = 0; ; batches++) {
        if (this.hooks.shouldStop?.()) break;
        if (batches > 0 && input.timeBudgetMs !== undefined && Date.now() - started >= input.timeBudgetMs) break;
        const range = {
          after: next,
          until: input.until,
          ...(input.tenant !== undefined && { tenant: input.tenant }),
        };
        const batch = await store.readBatch(this.reader, range, input.batchSize, deks);
        if (batch.count === 0) {
          done = true;
          break;
        }
        const last = textAt(batch.ids, batch.count - 1)!;
        next = last;
        const rows: MigrateColumns = {
          count: batch.count,
          tenants: batch.tenants,
          values: batch.values,
          dek: batch.dek,
        };
        const sealed = await sealBatch(this.deps, rows, await this.missingDeks(batch), input.dryRun);
        if (sealed.failures.length > 0) {
          const ids = textsAt(
            batch.ids,
            sealed.failures.map((f) => f.index),
          );
          for (const failure of sealed.failures) {
            if (this.failures.length >= MAX_LISTED) break;
            const field = store.fields[failure.field]!;
            this.failures.push({
              where: field.where,
              row: ids.get(failure.index) ?? '?',
              field: field.field.name,
              reason: failure.reason,
            });
          }
        }
        // The previous batch's write overlaps this batch's read and crypto; writes themselves stay in order, and the
        // cursor a checkpoint gives is always one a write committed.
        await pendingWrite;
        this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
        pendingWrite = this.write(batch, sealed, last);
        pendingWrite.catch(() => undefined);
      }
    } finally {
      await pendingWrite;
    }
    if (done && !input.dryRun) await store.markDone(this.writer, this.keys);
    this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
    return this.result(done);
  }

  /** One batch's compare-and-swap and its counts; the cursor moves past the batch once it is committed. */
  private async write(batch: FieldsBatch, sealed: MigrateChunkResult, last: string): Promise<void> {
    const { rows: store } = this.deps;
    const { unreadable } = sealed;
    if (this.input.dryRun) {
      sealed.values.forEach((column, f) => {
        for (const length of column.lengths) if (length >= 0) this.counters[f]!.migrated += 1;
      });
    } else {
      const lost = await store.compareAndSwap(this.writer, batch, sealed, {
        keys: this.keys,
        unreadable,
        cursor: last,
      });
      this.count(batch, sealed, lost);
    }
    unreadable.forEach((n, i) => (this.counters[i]!.unreadable += n));
    this.cursor = last;
  }

  /** What the batch's statement counted, here too: each written field migrated, each field of a lost row a conflict. */
  private count(batch: FieldsBatch, sealed: MigrateChunkResult, lost: Set<string>): void {
    const ids = lost.size > 0 ? textsAt(batch.ids, sealed.indexes) : undefined;
    sealed.values.forEach((column, f) => {
      const counters = this.counters[f]!;
      for (let w = 0; w < column.lengths.length; w++) {
        if (column.lengths[w]! < 0) continue;
        if (ids && lost.has(ids.get(sealed.indexes[w]!)!)) counters.casConflicts += 1;
        else counters.migrated += 1;
      }
    });
  }

  /** True if a previous attempt finished the part. */
  private async resume(): Promise<boolean> {
    const { rows: store } = this.deps;
    const { input } = this;
    const existing = async () =>
      input.countExisting
        ? Promise.all(store.fields.map(async (f) => (await f.count(this.reader, input)).current))
        : store.fields.map(() => 0);
    if (input.dryRun) {
      if (input.resumeFrom) {
        this.cursor = input.resumeFrom.cursor;
        this.counters = input.resumeFrom.counters.map((c) => addFieldCounters(emptyFieldCounters(), c));
      } else {
        (await existing()).forEach((n, i) => (this.counters[i]!.alreadyCurrent = n));
      }
      return false;
    }
    let progress = await store.readProgress(this.reader, this.keys);
    if (!progress) {
      await store.createProgress(this.reader, this.keys, input.after, await existing());
      progress = (await store.readProgress(this.reader, this.keys))!;
    }
    this.cursor = progress[0]!.cursor ?? input.after;
    this.counters = progress.map((p) => p.counters);
    return progress[0]!.done;
  }

  /**
   * The DEK rows of the batch's tenants whose DEK did not come with the batch (the read's DEK id is NULL): provisioned
   * now (not in a dry run), or re-read where another writer provisioned first; or why a tenant has none. Only wrapped
   * DEKs leave this thread: they are unwrapped where the values are sealed.
   */
  private async missingDeks(batch: FieldsBatch): Promise<Record<string, WrappedDek | string>> {
    const { deks: store, keks } = this.deps;
    const without: number[] = [];
    for (let i = 0; i < batch.count; i++) if (batch.dek.ids.lengths[i]! < 0) without.push(i);
    const deks: Record<string, WrappedDek | string> = {};
    if (without.length === 0) return deks;
    const wanted = [...new Set(textsAt(batch.tenants, without).values())].filter((t): t is string => t !== null);
    if (this.input.dryRun) {
      for (const tenant of wanted) deks[tenant] = WOULD_PROVISION;
      return deks;
    }
    // The batch's new DEKs and their nonces from one call to the CSPRNG each, sealed under one key schedule.
    const fresh = randomBytes(KEY_BYTES * wanted.length);
    const nonces = randomBytes(NONCE_BYTES * wanted.length);
    const current = keks[0]!;
    const key = scheduleKey(current.key);
    let written: Set<string>;
    const writes: { id: string; values: ReturnType<TargetStore['codec']['seal']> }[] = [];
    try {
      wanted.forEach((id, k) => {
        writes.push({
          id,
          values: store.codec.seal(
            key,
            fresh.subarray(k * KEY_BYTES, (k + 1) * KEY_BYTES),
            { [store.target.id]: id },
            current.kekId,
            nonces.subarray(k * NONCE_BYTES, (k + 1) * NONCE_BYTES),
          ),
        });
      });
      // Counted on the group's first field, in the same statement as the DEKs written.
      written = await store.provisionMissing(this.reader, current.kekId, writes, this.keys[0]!);
      this.counters[0]!.deksProvisioned += written.size;
    } finally {
      fresh.fill(0);
      releaseKey(key);
    }
    // The DEKs written here are the stored ones, as written; where another writer won (the application provisioning
    // lazily meanwhile), or there is no row, the table says.
    for (const { id, values } of writes) {
      if (!written.has(id)) continue;
      const row: Record<string, unknown> = { [store.target.id]: id, $id: id, $label: current.kekId };
      store.codec.writeColumns.forEach((column, k) => (row[column] = values[k]));
      deks[id] = row as WrappedDek;
    }
    const others = wanted.filter((t) => !written.has(t));
    if (others.length > 0) {
      const found = new Map((await store.readByIds(this.reader, others)).map((r: TargetRow) => [r.$id, r]));
      for (const tenant of others) {
        const row = found.get(tenant);
        deks[tenant] = row
          ? { ...row }
          : `tenant ${tenant} has no row in ${store.table}: there is no DEK to encrypt it under`;
      }
    }
    return deks;
  }

  private result(done: boolean): RowSliceResult {
    return { cursor: this.cursor, counters: this.counters, done, failures: this.failures };
  }
}
