// Moves the legacy values of a group of fields of one table (see RowFieldsStore) to their current form, row by row:
// each row read once with all its legacy fields, its tenant's DEK unwrapped once per batch, every field opened under
// the KEK and sealed under the DEK, and the row written once, only if every field it writes still holds what was
// read. The crypto (src/rewrap/migrate-chunk.ts) runs on the rotation's crypto threads when the worker has them (the
// batch split over them), with the native AES-GCM when the addon is in use. A tenant without a DEK gets one first; a
// value that does not decrypt is reported, counted, and never written (the row's other fields still are).
import { randomBytes } from 'node:crypto';
import type { PoolClient } from 'pg';
import { KEY_BYTES, NONCE_BYTES } from '../codec/sealed-format';
import type { ThreadedRowCrypto } from '../crypto/row-crypto';
import type { ResolvedKek } from '../keys/kek-resolver';
import { checkout } from '../store/connect';
import { RowFieldsStore, type FieldsRow, type FieldsWrite } from '../store/row-fields-store';
import type { TargetRow, TargetStore } from '../store/target-store';
import { addFieldCounters, emptyFieldCounters, type FieldCounters } from './field-counters';
import {
  migrateChunk,
  WOULD_PROVISION,
  type MigrateChunkInput,
  type MigrateChunkResult,
  type MigrateChunkTask,
  type WrappedDek,
} from './migrate-chunk';
import type { FieldFailure } from './migrate-fields';

export interface RowSliceInput {
  after: string;
  until: string | null;
  tenant?: string;
  batchSize: number;
  dryRun: boolean;
  timeBudgetMs?: number;
  /** The part's key: each field's progress row is `<progressKey>/field-<index in the target>`. */
  progressKey: string;
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
  const client = await checkout(deps.rows.db);
  let failure: Error | undefined;
  try {
    return await new RowSliceRun(deps, input, hooks, client).run();
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    client.release(failure);
  }
}

/** The crypto of one batch: in this thread, or split over the crypto threads (key copies moved to each). */
function sealBatch(deps: RowSliceDependencies, input: Omit<MigrateChunkInput, 'keks'>): Promise<MigrateChunkResult> {
  const { rows, threads } = deps;
  const keks = deps.keks.map((k) => ({ kekId: k.kekId, key: k.key }));
  const fields = rows.fields;
  if (!threads) {
    const codecs = { dek: deps.deks.codec, legacy: fields.map((f) => f.legacy), current: fields.map((f) => f.current) };
    return Promise.resolve(migrateChunk(codecs, { ...input, keks }));
  }
  const formats = {
    dek: deps.deks.codec.format,
    legacy: fields.map((f) => f.legacy.format),
    current: fields.map((f) => f.current.format),
  };
  const chunks = Math.max(1, Math.min(threads.threads, Math.ceil(input.rows.length / MIN_CHUNK_ROWS)));
  const size = Math.ceil(input.rows.length / chunks);
  return Promise.all(
    Array.from({ length: chunks }, async (_, c) => {
      const rows = input.rows.slice(c * size, (c + 1) * size);
      const deks: Record<string, WrappedDek | string> = {};
      for (const row of rows) if (input.deks[row.tenant] !== undefined) deks[row.tenant] = input.deks[row.tenant]!;
      const copies = keks.map((k) => {
        const key = new ArrayBuffer(k.key.length);
        new Uint8Array(key).set(k.key);
        return { kekId: k.kekId, key };
      });
      const task: MigrateChunkTask = { formats, keks: copies, rows, deks, dryRun: input.dryRun };
      try {
        return await threads.runTask<MigrateChunkResult>(
          'migrateChunk',
          task,
          copies.map((k) => k.key),
        );
      } finally {
        // Moved: detached and empty. Not moved (the pool refused the task): zeroized here.
        for (const { key } of copies) if (key.byteLength > 0) new Uint8Array(key).fill(0);
      }
    }),
  ).then((parts) => ({
    writes: parts.flatMap((p) => p.writes),
    unreadable: fields.map((_, i) => parts.reduce((n, p) => n + p.unreadable[i]!, 0)),
    failures: parts.flatMap((p) => p.failures),
  }));
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
    private readonly client: PoolClient,
  ) {
    this.cursor = input.after;
    this.counters = deps.rows.fields.map(() => emptyFieldCounters());
    this.keys = deps.fieldIndexes.map((i) => RowFieldsStore.progressKey(input.progressKey, i));
  }

  async run(): Promise<RowSliceResult> {
    const { rows: store } = this.deps;
    const { input } = this;
    const started = Date.now();
    if (await this.resume()) return this.result(true);
    let done = false;
    // At least one batch per attempt, whatever the budget (see migrateFieldSlice).
    for (let batches = 0; ; batches++) {
      if (this.hooks.shouldStop?.()) break;
      if (batches > 0 && input.timeBudgetMs !== undefined && Date.now() - started >= input.timeBudgetMs) break;
      const range = {
        after: this.cursor,
        until: input.until,
        ...(input.tenant !== undefined && { tenant: input.tenant }),
      };
      const rows = await store.readLegacy(this.client, range, input.batchSize);
      if (rows.length === 0) {
        done = true;
        break;
      }
      const sealed = await sealBatch(this.deps, { rows, deks: await this.loadDeks(rows), dryRun: input.dryRun });
      for (const failure of sealed.failures) {
        if (this.failures.length >= MAX_LISTED) break;
        const field = store.fields[failure.field]!;
        this.failures.push({ where: field.where, row: failure.row, field: field.field.name, reason: failure.reason });
      }
      const { writes, unreadable } = sealed;
      const last = rows[rows.length - 1]!.id;
      if (input.dryRun) {
        for (const write of writes) write.value.forEach((v, i) => v !== null && (this.counters[i]!.migrated += 1));
      } else {
        const lost = await store.compareAndSwap(this.client, writes, { keys: this.keys, unreadable, cursor: last });
        this.count(writes, lost);
      }
      unreadable.forEach((n, i) => (this.counters[i]!.unreadable += n));
      this.cursor = last;
      this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
    }
    if (done && !input.dryRun) await store.markDone(this.client, this.keys);
    return this.result(done);
  }

  /** What the batch's statement counted, here too: each written field migrated, each field of a lost row a conflict. */
  private count(writes: FieldsWrite[], lost: Set<string>): void {
    for (const write of writes) {
      const won = !lost.has(write.id);
      write.value.forEach((v, i) => {
        if (v === null) return;
        if (won) this.counters[i]!.migrated += 1;
        else this.counters[i]!.casConflicts += 1;
      });
    }
  }

  /** True if a previous attempt finished the part. */
  private async resume(): Promise<boolean> {
    const { rows: store } = this.deps;
    const { input } = this;
    const existing = async () =>
      input.countExisting
        ? Promise.all(store.fields.map(async (f) => (await f.count(this.client, input)).current))
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
    let progress = await store.readProgress(this.client, this.keys);
    if (!progress) {
      await store.createProgress(this.client, this.keys, input.after, await existing());
      progress = (await store.readProgress(this.client, this.keys))!;
    }
    this.cursor = progress[0]!.cursor ?? input.after;
    this.counters = progress.map((p) => p.counters);
    return progress[0]!.done;
  }

  /**
   * The wrapped DEK of every tenant of the batch, provisioning those that have none (not in a dry run); or why a
   * tenant has none. Only wrapped DEKs leave this thread: they are unwrapped where the values are sealed.
   */
  private async loadDeks(rows: FieldsRow[]): Promise<Record<string, WrappedDek | string>> {
    const { deks: store, keks } = this.deps;
    const wanted = [...new Set(rows.map((r) => r.tenant))];
    const byId = (found: TargetRow[]) => new Map(found.map((r) => [r.$id, r]));
    let found = byId(await store.readByIds(this.client, wanted));
    const missing = wanted.filter((t) => !found.has(t));
    if (missing.length > 0 && !this.input.dryRun) {
      const fresh = new Map(missing.map((t) => [t, randomBytes(KEY_BYTES)]));
      try {
        const current = keks[0]!;
        const writes = missing.map((id) => ({
          id,
          values: store.codec.seal(
            current.key,
            fresh.get(id)!,
            { [store.target.id]: id },
            current.kekId,
            randomBytes(NONCE_BYTES),
          ),
        }));
        // Counted on the group's first field, in the same statement as the DEKs written.
        const written = await store.provisionMissing(this.client, current.kekId, writes, this.keys[0]!);
        this.counters[0]!.deksProvisioned += written.size;
      } finally {
        for (const dek of fresh.values()) dek.fill(0);
      }
      // Whoever won (this migration, or the application provisioning lazily meanwhile), the stored DEK is the one.
      found = byId(await store.readByIds(this.client, wanted));
    }
    const deks: Record<string, WrappedDek | string> = {};
    for (const tenant of wanted) {
      const row = found.get(tenant);
      deks[tenant] = row
        ? { ...row }
        : this.input.dryRun
          ? WOULD_PROVISION
          : `tenant ${tenant} has no row in ${store.table}: there is no DEK to encrypt it under`;
    }
    return deks;
  }

  private result(done: boolean): RowSliceResult {
    return { cursor: this.cursor, counters: this.counters, done, failures: this.failures };
  }
}
