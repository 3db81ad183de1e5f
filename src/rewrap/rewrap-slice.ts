import { randomBytes } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import { NONCE_BYTES, WRAPPED_DEK_BYTES } from '../envelope/dek-wrapping';
import { DekUnwrapError } from '../envelope/errors';
import type { KeyProvider } from '../keys/key-provider';
import { checkout } from '../store/connect';
import { addCounters, emptyCounters, type RewrapCounters } from './counters';

export interface RewrapSliceInput {
  from: string;
  to: string;
  /** Exclusive lower bound of the slice's tenant-id range ('' = from the start). */
  after: string;
  /** Inclusive upper bound (null = to the end). */
  until: string | null;
  /** Rotate this one tenant only. */
  tenantId?: string;
  batchSize: number;
  dryRun: boolean;
  /** Re-reads and retries of a row that lost the compare-and-swap race, before it is left for a later pass. */
  maxCasRetries?: number;
  /** Stop at the first batch boundary after this long; the result's cursor says where to go on. */
  timeBudgetMs?: number;
  /**
   * Names this slice's row in rewrap_progress. With it, each batch's DEK writes and its counters commit in one
   * statement, and a retried slice resumes from what was committed: nothing is counted twice or lost.
   */
  progressKey?: string;
  /** Where a previous attempt got to (heartbeat details); the progress row wins when it is further. */
  resumeFrom?: RewrapCheckpoint;
  /**
   * Count the DEKs in range already on `to` ("Already done") and on a third KEK ("Skipped") before starting.
   * Default true; a rotation asks for it only on the first part of each slice of its first pass, so that later
   * passes and continuations do not count the same rows again.
   */
  countExisting?: boolean;
}

export interface RewrapCheckpoint {
  cursor: string;
  counters: RewrapCounters;
}

export interface TenantFailure {
  tenantId: string;
  reason: string;
}

export interface RewrapSliceResult extends RewrapCheckpoint {
  /** True when the range holds nothing more to scan; false when stopped early (time budget, pause, abort). */
  done: boolean;
  /** DEKs that did not unwrap (bounded list); they are never rewritten. */
  failures: TenantFailure[];
  /** Rows still contended after the retries (bounded list); a later pass picks them up. */
  contendedTenants: string[];
}

export interface RewrapHooks {
  /** After every batch: heartbeat here. */
  onBatch?(checkpoint: RewrapCheckpoint): void;
  /** Checked before every batch: true stops the slice at this batch boundary. */
  shouldStop?(): boolean;
}

export interface RewrapDependencies {
  db: Pool;
  keys: KeyProvider;
}

const MAX_LISTED = 100;

interface DekRow {
  tenant_id: string;
  /** bigint, kept as the decimal text PostgreSQL sends: it only travels back in the compare-and-swap. */
  version: string;
  wrapped_dek: Buffer;
}

interface PreparedBatch {
  ids: string[];
  versions: string[];
  /** Every wrapped DEK of the batch, back to back: one binary parameter instead of a text-encoded array. */
  wrapped: Buffer;
  /** DEKs of the batch that did not unwrap: counted in the same statement as the batch's writes. */
  failed: number;
}

/**
 * Rewraps the DEKs of one tenant range from KEK `from` to KEK `to`, in batches ordered by tenant id (keyset
 * pagination). Each batch is written with one compare-and-swap statement: a row is updated only if its version is
 * still the one read. Rows that lost the race are re-read and retried with jitter, then left for a later pass.
 * A DEK that does not unwrap is reported and never rewritten.
 */
export async function rewrapSlice(
  deps: RewrapDependencies,
  input: RewrapSliceInput,
  hooks: RewrapHooks = {},
): Promise<RewrapSliceResult> {
  const reader = await checkout(deps.db);
  const writer = await checkout(deps.db);
  let failure: Error | undefined;
  try {
    return await new SliceRun(deps, input, hooks, reader, writer).run();
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    // After a failure the connections may be broken: the pool discards them instead of handing them out again.
    reader.release(failure);
    writer.release(failure);
  }
}

class SliceRun {
  private counters: RewrapCounters = emptyCounters();
  private cursor: string;
  private readonly failures: TenantFailure[] = [];
  private readonly contended: string[] = [];
  private readonly maxCasRetries: number;

  constructor(
    private readonly deps: RewrapDependencies,
    private readonly input: RewrapSliceInput,
    private readonly hooks: RewrapHooks,
    private readonly reader: PoolClient,
    private readonly writer: PoolClient,
  ) {
    this.cursor = input.after;
    this.maxCasRetries = input.maxCasRetries ?? 3;
  }

  async run(): Promise<RewrapSliceResult> {
    const started = Date.now();
    if (await this.resume()) return this.result(true);

    let pendingWrite: Promise<void> = Promise.resolve();
    let done = false;
    try {
      for (;;) {
        if (this.hooks.shouldStop?.()) break;
        if (this.input.timeBudgetMs !== undefined && Date.now() - started >= this.input.timeBudgetMs) break;
        const rows = await this.readBatch();
        if (rows.length === 0) {
          done = true;
          break;
        }
        const last = rows[rows.length - 1]!.tenant_id;
        const prepared = this.prepare(rows);
        // The previous batch's write overlaps this batch's crypto; writes themselves stay in order.
        await pendingWrite;
        this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
        pendingWrite = this.write(prepared, last);
        // Awaited before the next write or at the end; until then a failure must not count as unhandled.
        pendingWrite.catch(() => undefined);
        this.cursor = last;
        if (this.input.tenantId !== undefined) {
          done = true;
          break;
        }
      }
    } finally {
      await pendingWrite;
    }
    if (done) await this.markDone();
    this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
    return this.result(done);
  }

  /** Picks up a previous attempt; true if that attempt already finished the slice. */
  private async resume(): Promise<boolean> {
    const { progressKey, resumeFrom } = this.input;
    if (resumeFrom) {
      this.cursor = resumeFrom.cursor;
      this.counters = { ...resumeFrom.counters };
    }
    if (progressKey === undefined || this.input.dryRun) {
      if (!resumeFrom && this.input.countExisting !== false) {
        this.counters = addCounters(this.counters, await this.countExisting(this.reader));
      }
      return false;
    }
    const existing = await this.reader.query<ProgressRow>(
      'SELECT * FROM rekey.rewrap_progress WHERE progress_key = $1',
      [progressKey],
    );
    const row = existing.rows[0];
    if (row) {
      // Committed together with the DEKs it counts, so it is never behind them.
      this.cursor = row.cursor ?? this.input.after;
      this.counters = countersOf(row);
      return row.done;
    }
    const initial = this.input.countExisting === false ? emptyCounters() : await this.countExisting(this.reader);
    await this.writer.query(
      `INSERT INTO rekey.rewrap_progress (target, progress_key, cursor, already_on_target, skipped)
       VALUES ('rekey', $1, $2, $3, $4) ON CONFLICT (progress_key) DO NOTHING`,
      [progressKey, this.input.after, initial.alreadyOnTarget, initial.skipped],
    );
    this.counters = initial;
    return false;
  }

  /** DEKs in range that are already on `to` ("Already done") or on another KEK ("Skipped"). */
  private async countExisting(client: PoolClient): Promise<RewrapCounters> {
    const { sql, params } = this.rangeFilter(3);
    const { rows } = await client.query<{ on_target: string; other: string }>(
      `SELECT count(*) FILTER (WHERE kek_id = $1) AS on_target,
              count(*) FILTER (WHERE kek_id <> $1 AND kek_id <> $2) AS other
       FROM rekey.tenant_deks WHERE ${sql}`,
      [this.input.to, this.input.from, ...params],
    );
    return { ...emptyCounters(), alreadyOnTarget: Number(rows[0]?.on_target), skipped: Number(rows[0]?.other) };
  }

  private rangeFilter(firstParam: number): { sql: string; params: string[] } {
    if (this.input.tenantId !== undefined) return { sql: `tenant_id = $${firstParam}`, params: [this.input.tenantId] };
    const params = [this.cursor];
    let sql = `tenant_id > $${firstParam}`;
    if (this.input.until !== null) {
      sql += ` AND tenant_id <= $${firstParam + 1}`;
      params.push(this.input.until);
    }
    return { sql, params };
  }

  private async readBatch(): Promise<DekRow[]> {
    const { sql, params } = this.rangeFilter(2);
    const { rows } = await this.reader.query<DekRow>(
      `SELECT tenant_id, version, wrapped_dek FROM rekey.tenant_deks
       WHERE kek_id = $1 AND ${sql} ORDER BY tenant_id LIMIT ${Math.trunc(this.input.batchSize)}`,
      [this.input.from, ...params],
    );
    return rows;
  }

  /** Unwraps with `from` and wraps with `to`; DEKs that do not unwrap are reported and left as they are. */
  private prepare(rows: DekRow[]): PreparedBatch {
    const { keys } = this.deps;
    const { from, to, dryRun } = this.input;
    const nonces = dryRun ? Buffer.alloc(0) : randomBytes(NONCE_BYTES * rows.length);
    const wrapped = dryRun ? Buffer.alloc(0) : Buffer.allocUnsafe(WRAPPED_DEK_BYTES * rows.length);
    const ids: string[] = [];
    const versions: string[] = [];
    let failed = 0;
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!;
      let dek: Buffer;
      try {
        dek = keys.unwrap(from, row.tenant_id, row.wrapped_dek);
      } catch (err) {
        if (!(err instanceof DekUnwrapError)) throw err;
        failed += 1;
        if (this.failures.length < MAX_LISTED) this.failures.push({ tenantId: row.tenant_id, reason: err.reason });
        continue;
      }
      if (!dryRun) {
        const nonce = nonces.subarray(i * NONCE_BYTES, (i + 1) * NONCE_BYTES);
        keys.wrapInto(wrapped, ids.length * WRAPPED_DEK_BYTES, to, row.tenant_id, dek, nonce);
      }
      dek.fill(0);
      ids.push(row.tenant_id);
      versions.push(row.version);
    }
    return { ids, versions, wrapped: wrapped.subarray(0, ids.length * WRAPPED_DEK_BYTES), failed };
  }

  private async write(batch: PreparedBatch, cursor: string): Promise<void> {
    if (this.input.dryRun) {
      this.counters = {
        ...this.counters,
        rewrapped: this.counters.rewrapped + batch.ids.length,
        failed: this.counters.failed + batch.failed,
      };
      return;
    }
    let pending = batch;
    for (let attempt = 0; ; attempt++) {
      const won = await this.compareAndSwap(pending, attempt === 0 ? cursor : null);
      const losers = pending.ids.filter((id) => !won.has(id));
      if (losers.length === 0) return;
      if (attempt >= this.maxCasRetries) {
        this.counters = { ...this.counters, contended: this.counters.contended + losers.length };
        await this.recordDelta({ ...emptyCounters(), contended: losers.length });
        for (const id of losers) if (this.contended.length < MAX_LISTED) this.contended.push(id);
        return;
      }
      // A live writer changed these rows since we read them: back off a little, re-read, try again.
      await new Promise((resolve) => setTimeout(resolve, (attempt + 1) * (5 + Math.random() * 20)));
      pending = await this.reprepare(losers);
    }
  }

  /** Re-reads rows that lost a race; those no longer on `from` are counted, the rest are rewrapped again. */
  private async reprepare(tenantIds: string[]): Promise<PreparedBatch> {
    const { rows } = await this.writer.query<DekRow & { kek_id: string }>(
      'SELECT tenant_id, kek_id, version, wrapped_dek FROM rekey.tenant_deks WHERE tenant_id = ANY($1) ORDER BY tenant_id',
      [tenantIds],
    );
    const stillStale = rows.filter((r) => r.kek_id === this.input.from);
    const movedToTarget = rows.filter((r) => r.kek_id === this.input.to).length;
    const movedElsewhere = rows.length - stillStale.length - movedToTarget;
    if (movedToTarget + movedElsewhere > 0) {
      const delta = { ...emptyCounters(), alreadyOnTarget: movedToTarget, skipped: movedElsewhere };
      this.counters = addCounters(this.counters, delta);
      await this.recordDelta(delta);
    }
    return this.prepare(stillStale);
  }

  /**
   * One statement: update the rows whose version is still the one read, and (with a progress key) add what it did
   * to the slice's progress row. Returns the tenants that were written.
   */
  private async compareAndSwap(batch: PreparedBatch, cursor: string | null): Promise<Set<string>> {
    const withProgress = this.input.progressKey !== undefined;
    const progress = withProgress
      ? `, progress AS (
           UPDATE rekey.rewrap_progress SET
             cursor = COALESCE($7, cursor),
             rewrapped = rewrapped + (SELECT count(*) FROM updated),
             cas_conflicts = cas_conflicts + ($8::int - (SELECT count(*) FROM updated)),
             failed = failed + $9::int,
             updated_at = now()
           WHERE progress_key = $6)`
      : '';
    const values: unknown[] = [batch.ids, batch.versions, batch.wrapped, this.input.to, this.input.from];
    if (withProgress) values.push(this.input.progressKey, cursor, batch.ids.length, batch.failed);
    const { rows } = await this.writer.query<{ tenant_id: string }>(
      `WITH updated AS (
         UPDATE rekey.tenant_deks AS t SET
           kek_id = $4,
           wrapped_dek = substring($3::bytea FROM ((u.ord - 1) * ${WRAPPED_DEK_BYTES} + 1)::int FOR ${WRAPPED_DEK_BYTES}),
           version = t.version + 1,
           updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(tenant_id, version, ord)
         WHERE t.tenant_id = u.tenant_id AND t.version = u.version AND t.kek_id = $5
         RETURNING t.tenant_id)${progress}
       SELECT tenant_id FROM updated`,
      values,
    );
    const won = new Set(rows.map((r) => r.tenant_id));
    this.counters = {
      ...this.counters,
      rewrapped: this.counters.rewrapped + won.size,
      casConflicts: this.counters.casConflicts + (batch.ids.length - won.size),
      failed: this.counters.failed + batch.failed,
    };
    return won;
  }

  private async recordDelta(delta: RewrapCounters): Promise<void> {
    if (this.input.progressKey === undefined) return;
    await this.writer.query(
      `UPDATE rekey.rewrap_progress SET already_on_target = already_on_target + $2, skipped = skipped + $3,
         contended = contended + $4, updated_at = now() WHERE progress_key = $1`,
      [this.input.progressKey, delta.alreadyOnTarget, delta.skipped, delta.contended],
    );
  }

  private async markDone(): Promise<void> {
    if (this.input.progressKey === undefined || this.input.dryRun) return;
    await this.writer.query('UPDATE rekey.rewrap_progress SET cursor = $2, done = true WHERE progress_key = $1', [
      this.input.progressKey,
      this.cursor,
    ]);
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

interface ProgressRow {
  cursor: string | null;
  done: boolean;
  rewrapped: string;
  already_on_target: string;
  skipped: string;
  cas_conflicts: string;
  contended: string;
  failed: string;
}

const countersOf = (row: ProgressRow): RewrapCounters => ({
  rewrapped: Number(row.rewrapped),
  alreadyOnTarget: Number(row.already_on_target),
  skipped: Number(row.skipped),
  casConflicts: Number(row.cas_conflicts),
  contended: Number(row.contended),
  failed: Number(row.failed),
});
