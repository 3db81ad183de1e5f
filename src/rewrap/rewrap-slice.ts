import type { PoolClient } from 'pg';
import type { CallWindow } from '../crypto/request-pacer';
import { sharedRowCrypto, type RowCrypto } from '../crypto/row-crypto';
import type { EngineKek as ResolvedKek } from '../keyring/cipher';
import { checkout } from '../store/connect';
import { addToProgress, createProgress, markProgressDone, readProgress } from '../store/rewrap-progress';
import {
  batchId,
  type ColumnBatch,
  type ColumnWrites,
  type RowWrite,
  type TargetRow,
  type TargetStore,
} from '../store/target-store';
import { runBatchPipeline } from './batch-pipeline';
import { addCounters, emptyCounters, type RewrapCounters, type TenantFailure } from './counters';

export interface RewrapSliceInput {
  /** Exclusive lower bound of the slice's id range ('' = from the start). */
  after: string;
  /** Inclusive upper bound (null = to the end). */
  until: string | null;
  /** Rotate this one row only (a canary). */
  rowId?: string;
  /**
   * 'from' (default): the rows labelled with the old KEK. 'others': the rows labelled with neither KEK, each tried
   * under the old one; those it opens are in fact on it (their label lies) and are moved too, counted as relabelled.
   */
  scan?: 'from' | 'others';
  batchSize: number;
  dryRun: boolean;
  /** Re-reads and retries of a row that lost the compare-and-swap race, before it is left for a later pass. */
  maxCasRetries?: number;
  /** Stop at the first batch boundary after this long; the result's cursor says where to go on. */
  timeBudgetMs?: number;
  /**
   * Names this slice's row in rekey.rewrap_progress. With it, each batch's writes and its counters commit in one
   * statement, and a retried slice resumes from what was committed: nothing is counted twice or lost.
   */
  progressKey?: string;
  /** Where a previous attempt got to (heartbeat details); the progress row wins when it is further. */
  resumeFrom?: RewrapCheckpoint;
  /**
   * Count the rows in range already on `to` ("Already done") and on anything else ("Skipped") before starting.
   * Default true; a rotation asks for it only on the first part of each slice of its first pass, so that later
   * passes and continuations do not count the same rows again.
   */
  countExisting?: boolean;
}

export interface RewrapCheckpoint {
  cursor: string;
  counters: RewrapCounters;
}

export type { TenantFailure } from './counters';

export interface RewrapSliceResult extends RewrapCheckpoint {
  /** True when the range holds nothing more to scan; false when stopped early (time budget, pause, abort). */
  done: boolean;
  /** Rows that did not decrypt (bounded list); they are never rewritten. */
  failures: TenantFailure[];
  /** Rows still contended after the retries (bounded list); a later pass picks them up. */
  contendedTenants: string[];
}

export interface RewrapHooks {
  /** Once, with the counters the slice starts from (a previous attempt's, committed or heartbeated, or the first). */
  onStart?(counters: RewrapCounters): void;
  /** After every batch: heartbeat here. */
  onBatch?(checkpoint: RewrapCheckpoint): void;
  /**
   * Every `aliveEveryMs` (default 5 s) while no batch has ended, with the last checkpoint given to onBatch (or the one
   * the slice started from): heartbeat here too. A batch can take longer than an activity's heartbeat timeout (a
   * key store paced at a few hundred calls a second, shared by the slices); without it the attempt would be taken for
   * lost and a second one started beside it, spending the store's quota twice and losing its compare-and-swaps.
   */
  onAlive?(checkpoint: RewrapCheckpoint): void;
  aliveEveryMs?: number;
  /** Checked before every batch: true stops the slice at this batch boundary. */
  shouldStop?(): boolean;
}

export interface RewrapDependencies {
  store: TargetStore;
  /** The KEK rows are labelled with now, and the one they move to: copies, which the caller zeroizes. */
  from: ResolvedKek;
  to: ResolvedKek;
  /** Registry states in which `to` may wrap: active, and for a canary also provisioned. */
  writable: readonly string[];
  /** Where the crypto runs: the process's thread pool when not given. */
  crypto?: RowCrypto;
}

const MAX_LISTED = 100;

/**
 * A batch ready to write: rows (and their writes), or, read and rewrapped by column, the batch and its writes by
 * column (no object per row).
 */
type PreparedBatch = {
  /** Rows of the batch that did not decrypt: counted in the same statement as the batch's writes. */
  failed: number;
} & ({ kind: 'rows'; writes: RowWrite[] } | { kind: 'columns'; batch: ColumnBatch; writes: ColumnWrites });

const writeCount = (batch: PreparedBatch) =>
  batch.kind === 'rows' ? batch.writes.length : batch.writes.indexes.length;

/**
 * Moves the rows of one id range from KEK `from` to KEK `to`, in batches ordered by id (keyset pagination). Each
 * row is decrypted with `from` and sealed with `to`; a row labelled `from` whose value is in fact under `to` (a
 * lazily provisioned DEK that kept the default label) is only relabelled; a row that decrypts under neither is
 * reported and never written. Each batch is one compare-and-swap statement: a row is written only if it is still as
 * read. Rows that lost the race are re-read and retried with jitter, then left for a later pass.
 */
export async function rewrapSlice(
  deps: RewrapDependencies,
  input: RewrapSliceInput,
  hooks: RewrapHooks = {},
): Promise<RewrapSliceResult> {
  const reader = await checkout(deps.store.db);
  const writer = await checkout(deps.store.db);
  // A canary wraps under a KEK that is still provisioned: the database lets this session do so (see the migration
  // kek-may-wrap), and the connection is closed afterwards rather than pooled with that permission.
  const wrapsProvisioned = deps.writable.includes('provisioned');
  let failure: Error | undefined;
  try {
    if (wrapsProvisioned) {
      await writer.query(`SELECT set_config('rekey.wrap_provisioned', $1, false)`, [deps.to.kekId]);
    }
    return await new SliceRun(deps, input, hooks, reader, writer).run();
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    // After a failure the connections may be broken: the pool discards them instead of handing them out again.
    reader.release(failure);
    writer.release(failure ?? wrapsProvisioned);
  }
}

class SliceRun {
  private counters: RewrapCounters = emptyCounters();
  private cursor: string;
  private readonly failures: TenantFailure[] = [];
  private readonly contended: string[] = [];
  private readonly maxCasRetries: number;
  private readonly others: boolean;

  constructor(
    private readonly deps: RewrapDependencies,
    private readonly input: RewrapSliceInput,
    private readonly hooks: RewrapHooks,
    private readonly reader: PoolClient,
    private readonly writer: PoolClient,
  ) {
    this.cursor = input.after;
    this.maxCasRetries = input.maxCasRetries ?? 3;
    this.others = input.scan === 'others';
  }

  async run(): Promise<RewrapSliceResult> {
    const started = Date.now();
    const finished = await this.resume();
    this.hooks.onStart?.(this.counters);
    if (finished) return this.result(true);

    // A remote key store's batches run their calls at once, up to `ahead` batches in one window of calls, so that a
    // call backing off does not hold the calls after it; they are written one after another, in order.
    const pipeline = this.input.rowId === undefined ? this.crypto().pipeline?.() : undefined;
    const calls = pipeline?.calls;
    let readCursor = this.cursor;
    let readOnce = false;
    let checkpoint: RewrapCheckpoint = { cursor: this.cursor, counters: this.counters };
    let lastBeat = Date.now();
    const aliveEveryMs = this.hooks.aliveEveryMs ?? 5_000;
    const alive =
      (this.hooks.onAlive || calls) &&
      setInterval(
        () => {
          // Stopped (pause, abort) while batches are under way: no call of theirs starts after this.
          if (calls && !calls.closed && this.hooks.shouldStop?.()) calls.close();
          if (!this.hooks.onAlive || Date.now() - lastBeat < aliveEveryMs) return;
          lastBeat = Date.now();
          this.hooks.onAlive(checkpoint);
        },
        Math.max(10, aliveEveryMs / 4),
      );
    type Read = NonNullable<Awaited<ReturnType<SliceRun['read']>>>;
    let done: boolean;
    try {
      ({ done } = await runBatchPipeline<Read, PreparedBatch>(
        {
          next: (batchesRead) => {
            if (this.input.rowId !== undefined && readOnce) return 'read'; // a canary's one batch was read: done
            if (this.hooks.shouldStop?.()) return 'stop';
            // At least one batch per attempt, whatever the budget (a slow resume must not leave the slice where it was).
            const spent = Date.now() - started;
            const budgetSpent = this.input.timeBudgetMs !== undefined && spent >= this.input.timeBudgetMs;
            return batchesRead > 0 && budgetSpent ? 'finish' : 'read';
          },
          read: async () => {
            // A canary is one row: one batch, and then the slice is done.
            if (this.input.rowId !== undefined && readOnce) return undefined;
            readOnce = true;
            const read = await this.read(readCursor);
            if (read !== undefined) readCursor = read.last;
            return read;
          },
          start: (read, window) => (read.rows ? this.prepare(read.rows, window) : this.prepareColumns(read.batch!)),
          take: (prepared, read) => {
            checkpoint = { cursor: this.cursor, counters: this.counters };
            lastBeat = Date.now();
            this.hooks.onBatch?.(checkpoint);
            const written = this.write(prepared, read.last);
            this.cursor = read.last;
            return written;
          },
        },
        { ...(calls && { calls }), ahead: pipeline?.batches ?? 1 },
      ));
    } finally {
      if (alive) clearInterval(alive);
    }
    if (done && this.input.progressKey !== undefined && !this.input.dryRun) {
      await markProgressDone(this.writer, this.input.progressKey, this.cursor);
    }
    this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
    return this.result(done);
  }

  /**
   * The next batch after the cursor, with its last id; undefined when the range holds no more. By column when the
   * crypto can rewrap by column and the scan is of the rows on `from` (not a dry run): no object per row.
   */
  private async read(after: string): Promise<{ last: string; rows?: TargetRow[]; batch?: ColumnBatch } | undefined> {
    const { store, from, to } = this.deps;
    const range = { after, until: this.input.until };
    if (!this.others && !this.input.dryRun && this.crypto().rewrapColumns) {
      const batch = await store.readColumns(this.reader, from.kekId, range, this.input.batchSize, this.input.rowId);
      return batch.count === 0 ? undefined : { last: batchId(batch, batch.count - 1), batch };
    }
    const rows = await store.readBatch(
      this.reader,
      this.others ? { kind: 'others', from: from.kekId, to: to.kekId } : { kind: 'label', kekId: from.kekId },
      range,
      this.input.batchSize,
      this.input.rowId,
    );
    return rows.length === 0 ? undefined : { last: rows[rows.length - 1]!.$id, rows };
  }

  private crypto(): RowCrypto {
    return this.deps.crypto ?? sharedRowCrypto();
  }

  /** Picks up a previous attempt; true if that attempt already finished the slice. */
  private async resume(): Promise<boolean> {
    const { progressKey, resumeFrom } = this.input;
    if (resumeFrom) {
      this.cursor = resumeFrom.cursor;
      this.counters = addCounters(emptyCounters(), resumeFrom.counters);
    }
    if (progressKey === undefined || this.input.dryRun) {
      if (!resumeFrom && this.input.countExisting !== false && !this.others) {
        this.counters = addCounters(this.counters, await this.countExisting());
      }
      return false;
    }
    const existing = await readProgress(this.reader, progressKey);
    if (existing) {
      // Committed together with the rows it counts, so it is never behind them.
      this.cursor = existing.cursor ?? this.input.after;
      this.counters = existing.counters;
      return existing.done;
    }
    const initial = this.input.countExisting === false || this.others ? emptyCounters() : await this.countExisting();
    await createProgress(this.writer, this.deps.store.target.name, progressKey, this.input.after, initial);
    this.counters = initial;
    return false;
  }

  /** Rows in range already on `to` ("Already done") or on another KEK, or with no value ("Skipped"). */
  private async countExisting(): Promise<RewrapCounters> {
    const { onTarget, other } = await this.deps.store.countExisting(
      this.reader,
      this.deps.from.kekId,
      this.deps.to.kekId,
      { after: this.input.after, until: this.input.until },
      this.input.rowId,
    );
    return { ...emptyCounters(), alreadyOnTarget: onTarget, skipped: other };
  }

  /** Decrypts with `from` (or finds the value already under `to`) and seals with `to`; unreadable rows are left. */
  private async prepare(rows: TargetRow[], calls?: CallWindow): Promise<PreparedBatch> {
    const { store, from, to } = this.deps;
    const crypto = this.crypto();
    const result = await crypto.rewrap(store.codec, from, to, rows, {
      others: this.others,
      dryRun: this.input.dryRun,
      ...(calls && { calls }),
    });
    if (result.requests !== undefined) {
      this.counters = addCounters(this.counters, { ...emptyCounters(), keyStoreRequests: result.requests });
    }
    for (const failure of result.failures) {
      if (this.failures.length >= MAX_LISTED) break;
      this.failures.push({ tenantId: rows[failure.index]!.$id, reason: failure.reason });
    }
    return {
      kind: 'rows',
      writes: result.writes.map((w) => ({
        id: rows[w.index]!.$id,
        row: rows[w.index]!,
        values: w.values,
        relabel: w.relabel,
      })),
      failed: result.failures.length,
    };
  }

  /** prepare() for a batch read by column: the crypto by column, the writes by column. */
  private async prepareColumns(batch: ColumnBatch): Promise<PreparedBatch> {
    const { store, from, to } = this.deps;
    const result = await this.crypto().rewrapColumns!(store.codec, from, to, batch.columns, {
      others: false,
      dryRun: false,
    });
    for (const failure of result.failures) {
      if (this.failures.length >= MAX_LISTED) break;
      this.failures.push({ tenantId: batchId(batch, failure.index), reason: failure.reason });
    }
    return { kind: 'columns', batch, writes: result, failed: result.failures.length };
  }

  private async write(batch: PreparedBatch, cursor: string): Promise<void> {
    if (this.input.dryRun) {
      const relabelled =
        batch.kind === 'rows'
          ? batch.writes.filter((w) => w.relabel).length
          : batch.writes.relabel.reduce((n, r) => n + r, 0);
      this.counters = addCounters(this.counters, {
        ...emptyCounters(),
        rewrapped: writeCount(batch) - relabelled,
        relabelled,
        failed: batch.failed,
      });
      return;
    }
    let pending = batch;
    for (let attempt = 0; ; attempt++) {
      const lost = await this.compareAndSwap(pending, attempt === 0 ? cursor : null);
      const losers =
        pending.kind === 'rows' ? pending.writes.filter((w) => lost.has(w.id)).map((w) => w.id) : [...lost];
      if (losers.length === 0) return;
      if (attempt >= this.maxCasRetries) {
        this.counters = { ...this.counters, contended: this.counters.contended + losers.length };
        if (this.input.progressKey !== undefined) {
          await addToProgress(this.writer, this.input.progressKey, {
            alreadyOnTarget: 0,
            skipped: 0,
            contended: losers.length,
          });
        }
        for (const id of losers) if (this.contended.length < MAX_LISTED) this.contended.push(id);
        return;
      }
      // A live writer changed these rows since we read them: back off a little, re-read, try again.
      await new Promise((resolve) => setTimeout(resolve, (attempt + 1) * (5 + Math.random() * 20)));
      pending = await this.reprepare(losers);
    }
  }

  /** Re-reads rows that lost a race; those no longer on `from` are counted, the rest are prepared again. */
  private async reprepare(ids: string[]): Promise<PreparedBatch> {
    const rows = await this.deps.store.readByIds(this.writer, ids);
    const { from, to } = this.deps;
    if (this.others) {
      // A scan of the others only moves rows still labelled neither KEK; the rest are another scan's.
      return this.prepare(rows.filter((r) => r.$label !== from.kekId && r.$label !== to.kekId));
    }
    const stillStale = rows.filter((r) => r.$label === from.kekId);
    const movedToTarget = rows.filter((r) => r.$label === to.kekId).length;
    const movedElsewhere = ids.length - stillStale.length - movedToTarget;
    if (movedToTarget + movedElsewhere > 0) {
      const delta = { alreadyOnTarget: movedToTarget, skipped: movedElsewhere, contended: 0 };
      this.counters = addCounters(this.counters, { ...emptyCounters(), ...delta });
      if (this.input.progressKey !== undefined) await addToProgress(this.writer, this.input.progressKey, delta);
    }
    return this.prepare(stillStale);
  }

  /** One statement: the batch's writes, and (with a progress key) what they did. Returns the ids that lost. */
  private async compareAndSwap(batch: PreparedBatch, cursor: string | null): Promise<Set<string>> {
    const { progressKey } = this.input;
    const { store, from, to, writable } = this.deps;
    const progress = progressKey === undefined ? undefined : { progressKey, cursor, failed: batch.failed };
    const outcome =
      batch.kind === 'rows'
        ? await store.compareAndSwap(this.writer, from.kekId, to.kekId, batch.writes, writable, progress)
        : await store.compareAndSwapColumns(
            this.writer,
            from.kekId,
            to.kekId,
            batch.batch,
            batch.writes,
            writable,
            progress,
          );
    this.counters = addCounters(this.counters, {
      ...emptyCounters(),
      rewrapped: outcome.written - outcome.relabelled,
      relabelled: outcome.relabelled,
      casConflicts: writeCount(batch) - outcome.written,
      failed: batch.failed,
    });
    return outcome.lost;
  }

  private result(done: boolean): RewrapSliceResult {
    return {
      cursor: this.cursor,
      counters: this.counters,
      done,
      failures: this.failures,
      contendedTenants: this.contended,
    };
  }
}
