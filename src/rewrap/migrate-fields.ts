// Moves one encrypted field from its legacy form (sealed by the KEK itself) to its current form (sealed by a tenant's
// DEK), over one id range, in batches: `rekey migrate-dek`. Each legacy value is opened under the KEK, sealed under
// the DEK the running application reads it with, and written only if the field still holds what was read. A tenant
// without a DEK gets one first, wrapped by the current KEK. A value that does not decrypt is reported with its table,
// row, field and reason, counted, and never written.
import { randomBytes } from 'node:crypto';
import type { PoolClient } from 'pg';
import { KEY_BYTES, NONCE_BYTES, type Codec } from '../codec/sealed-format';
import type { ResolvedKek } from '../keys/kek-resolver';
import { checkout } from '../store/connect';
import type { FieldRow, FieldStore, FieldWrite } from '../store/field-store';
import { addFieldCounters, emptyFieldCounters, type FieldCounters } from './field-counters';
import type { TargetRow, TargetStore } from '../store/target-store';
import { UnreadableValueError } from '../errors';

export interface FieldFailure {
  /** `public.user.mfa → totp.enabled.secret` */
  where: string;
  row: string;
  field: string;
  reason: string;
}

export interface FieldSliceInput {
  after: string;
  until: string | null;
  /** Only the values under this tenant's DEK (`--tenant-id`). */
  tenant?: string;
  batchSize: number;
  /** Decrypt and count, write nothing (no progress row either). */
  dryRun: boolean;
  timeBudgetMs?: number;
  /** Names the part's progress row: each batch's writes and counts commit together; a retry resumes from there. */
  progressKey: string;
  /** Where a previous attempt got to (heartbeat details): used in a dry run, which keeps no progress row. */
  resumeFrom?: FieldCheckpoint;
  /** Count the values in range already in the current form: the first part of each slice of the first pass. */
  countExisting: boolean;
}

export interface FieldCheckpoint {
  cursor: string;
  counters: FieldCounters;
}

export interface FieldSliceResult extends FieldCheckpoint {
  done: boolean;
  failures: FieldFailure[];
}

export interface FieldSliceDependencies {
  fields: FieldStore;
  /** The target's table of wrapped DEKs. */
  deks: TargetStore;
  legacy: Codec;
  current: Codec;
  /** The KEK new DEKs are wrapped with (the active one), then any other held KEK: tried in order. */
  keks: ResolvedKek[];
}

export interface FieldSliceHooks {
  onBatch?(checkpoint: FieldCheckpoint): void;
  shouldStop?(): boolean;
}

const MAX_LISTED = 100;
/** In a dry run, a tenant without a DEK: the run would provision one, so its values only need to open. */
const WOULD_PROVISION = 'would provision';

export async function migrateFieldSlice(
  deps: FieldSliceDependencies,
  input: FieldSliceInput,
  hooks: FieldSliceHooks = {},
): Promise<FieldSliceResult> {
  const client = await checkout(deps.fields.db);
  const deks = new Map<string, Buffer | FieldFailure['reason']>();
  let failure: Error | undefined;
  try {
    return await new FieldSliceRun(deps, input, hooks, client, deks).run();
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    client.release(failure);
    for (const dek of deks.values()) if (Buffer.isBuffer(dek)) dek.fill(0);
  }
}

class FieldSliceRun {
  private counters = emptyFieldCounters();
  private cursor: string;
  private readonly failures: FieldFailure[] = [];

  constructor(
    private readonly deps: FieldSliceDependencies,
    private readonly input: FieldSliceInput,
    private readonly hooks: FieldSliceHooks,
    private readonly client: PoolClient,
    /** Each tenant's DEK (zeroized by the caller), or why it has none. */
    private readonly deks: Map<string, Buffer | string>,
  ) {
    this.cursor = input.after;
  }

  async run(): Promise<FieldSliceResult> {
    const { fields } = this.deps;
    const { input } = this;
    const started = Date.now();
    if (await this.resume()) return this.result(true);
    let done = false;
    // At least one batch per attempt, whatever the budget: a part that stopped before its first batch would be
    // continued from the same cursor, again and again, without ever moving.
    for (let batches = 0; ; batches++) {
      if (this.hooks.shouldStop?.()) break;
      if (batches > 0 && input.timeBudgetMs !== undefined && Date.now() - started >= input.timeBudgetMs) break;
      const range = {
        after: this.cursor,
        until: input.until,
        ...(input.tenant !== undefined && { tenant: input.tenant }),
      };
      const rows = await fields.readLegacy(this.client, range, input.batchSize);
      if (rows.length === 0) {
        done = true;
        break;
      }
      await this.loadDeks(rows);
      const writes: FieldWrite[] = [];
      let unreadable = 0;
      try {
        for (const row of rows) {
          const written = this.migrate(row);
          if (typeof written === 'string') {
            unreadable += 1;
            if (this.failures.length < MAX_LISTED) {
              this.failures.push({ where: fields.where, row: row.id, field: fields.field.name, reason: written });
            }
          } else writes.push(written);
        }
      } finally {
        // A batch's DEKs are zeroized once it is sealed: the next batch is other tenants (memory stays one batch's).
        for (const dek of this.deks.values()) if (Buffer.isBuffer(dek)) dek.fill(0);
        this.deks.clear();
      }
      const last = rows[rows.length - 1]!.id;
      if (input.dryRun) {
        this.counters.migrated += writes.length;
      } else {
        const lost = await fields.compareAndSwap(this.client, writes, {
          progressKey: input.progressKey,
          cursor: last,
          unreadable,
        });
        this.counters.migrated += writes.length - lost.size;
        this.counters.casConflicts += lost.size;
      }
      this.counters.unreadable += unreadable;
      this.cursor = last;
      this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
    }
    if (done && !input.dryRun) await fields.markDone(this.client, input.progressKey);
    return this.result(done);
  }

  /** True if a previous attempt finished the part. */
  private async resume(): Promise<boolean> {
    const { fields } = this.deps;
    const { input } = this;
    if (input.dryRun) {
      if (input.resumeFrom) {
        this.cursor = input.resumeFrom.cursor;
        this.counters = addFieldCounters(emptyFieldCounters(), input.resumeFrom.counters);
      } else if (input.countExisting) {
        this.counters.alreadyCurrent = (await fields.count(this.client, input)).current;
      }
      return false;
    }
    let progress = await fields.readProgress(this.client, input.progressKey);
    if (!progress) {
      const already = input.countExisting ? (await fields.count(this.client, input)).current : 0;
      await fields.createProgress(this.client, input.progressKey, input.after, already);
      progress = (await fields.readProgress(this.client, input.progressKey))!;
    }
    this.cursor = progress.cursor ?? input.after;
    this.counters = progress.counters;
    return progress.done;
  }

  /** The DEK of every tenant of the batch, provisioning those that have none (not in a dry run). */
  private async loadDeks(rows: FieldRow[]): Promise<void> {
    const { deks: store, keks } = this.deps;
    const wanted = [...new Set(rows.map((r) => r.tenant))].filter((t) => !this.deks.has(t));
    if (wanted.length === 0) return;
    const byId = (rows: TargetRow[]) => new Map(rows.map((r) => [r.$id, r]));
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
        const written = await store.provisionMissing(this.client, current.kekId, writes, this.input.progressKey);
        this.counters.deksProvisioned += written.size;
      } finally {
        for (const dek of fresh.values()) dek.fill(0);
      }
      // Whoever won (this migration, or the application provisioning lazily meanwhile), the stored DEK is the one.
      found = byId(await store.readByIds(this.client, wanted));
    }
    for (const tenant of wanted) {
      const row = found.get(tenant);
      if (!row) {
        this.deks.set(
          tenant,
          this.input.dryRun
            ? WOULD_PROVISION
            : `tenant ${tenant} has no row in ${store.table}: there is no DEK to encrypt it under`,
        );
        continue;
      }
      this.deks.set(tenant, this.unwrap(row));
    }
  }

  private unwrap(row: TargetRow): Buffer | string {
    const reasons: string[] = [];
    for (const kek of this.deps.keks) {
      try {
        return this.deps.deks.codec.open(kek.key, row, row.$label);
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        reasons.push(`'${kek.kekId}': ${err.reason}`);
      }
    }
    return `tenant ${row.$id}'s DEK does not unwrap under any KEK held (${reasons.join('; ')})`;
  }

  /** The value sealed under its tenant's DEK, or why it cannot be. */
  private migrate(row: FieldRow): FieldWrite | string {
    const { current, keks } = this.deps;
    const dek = this.deks.get(row.tenant);
    if (dek === WOULD_PROVISION) {
      // A dry run: the DEK does not exist yet; the value only needs to open.
      const plaintext = this.openLegacy(row, keks);
      if (typeof plaintext === 'string') return plaintext;
      plaintext.fill(0);
      return { id: row.id, old: row.value, value: '' };
    }
    if (typeof dek === 'string' || dek === undefined) return dek ?? `no DEK for tenant ${row.tenant}`;
    const plaintext = this.openLegacy(row, keks);
    if (typeof plaintext === 'string') return plaintext;
    try {
      const [sealed] = current.seal(dek, plaintext, { value: null, tenant: row.tenant }, '', randomBytes(NONCE_BYTES));
      return { id: row.id, old: row.value, value: String(sealed) };
    } finally {
      plaintext.fill(0);
    }
  }

  private openLegacy(row: FieldRow, keks: ResolvedKek[]): Buffer | string {
    const problem = this.deps.legacy.check({ value: row.value });
    if (problem !== undefined) return problem;
    const reasons: string[] = [];
    for (const kek of keks) {
      try {
        return this.deps.legacy.open(kek.key, { value: row.value, tenant: row.tenant }, kek.kekId);
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        reasons.push(`'${kek.kekId}': ${err.reason}`);
      }
    }
    return `does not decrypt under any KEK held (${reasons.join('; ')})`;
  }

  private result(done: boolean): FieldSliceResult {
    return { cursor: this.cursor, counters: this.counters, done, failures: this.failures };
  }
}
