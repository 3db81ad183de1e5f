// Moves the legacy values of a group of fields of one table (see RowFieldsStore) to their current form, row by row:
// each row read once with all its legacy fields, its tenant's DEK unwrapped once per batch, every field opened under
// the KEK and sealed under the DEK, and the row written once, only if every field it writes still holds what was
// read. AES-GCM through the native schedules of src/crypto/aes-gcm.ts when the addon is in use (one schedule per KEK
// per part, one per DEK per batch). A tenant without a DEK gets one first; a value that does not decrypt is reported,
// counted, and never written (the row's other fields still are).
import { randomBytes } from 'node:crypto';
import type { PoolClient } from 'pg';
import { KEY_BYTES, NONCE_BYTES, type Codec } from '../codec/sealed-format';
import { releaseKey, scheduleKey, type AeadKey } from '../crypto/aes-gcm';
import type { ResolvedKek } from '../keys/kek-resolver';
import { checkout } from '../store/connect';
import { RowFieldsStore, type FieldsRow, type FieldsWrite } from '../store/row-fields-store';
import type { TargetRow, TargetStore } from '../store/target-store';
import { addFieldCounters, emptyFieldCounters, type FieldCounters } from './field-counters';
import type { FieldFailure } from './migrate-fields';
import { UnreadableValueError } from '../errors';

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
}

const MAX_LISTED = 100;
const WOULD_PROVISION = 'would provision';

/** A KEK as this part uses it: its schedule, made once for the whole part. */
interface Kek {
  kekId: string;
  key: AeadKey;
}

export async function migrateRowSlice(
  deps: RowSliceDependencies,
  input: RowSliceInput,
  hooks: { onBatch?(checkpoint: RowCheckpoint): void; shouldStop?(): boolean } = {},
): Promise<RowSliceResult> {
  const client = await checkout(deps.rows.db);
  const keks: Kek[] = deps.keks.map((k) => ({ kekId: k.kekId, key: scheduleKey(k.key) }));
  let failure: Error | undefined;
  try {
    return await new RowSliceRun(deps, input, hooks, client, keks).run();
  } catch (err) {
    failure = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    client.release(failure);
    for (const kek of keks) releaseKey(kek.key);
  }
}

class RowSliceRun {
  private counters: FieldCounters[];
  private cursor: string;
  private readonly failures: FieldFailure[] = [];
  private readonly keys: string[];
  private readonly legacy: Codec[];
  private readonly current: Codec[];

  constructor(
    private readonly deps: RowSliceDependencies,
    private readonly input: RowSliceInput,
    private readonly hooks: { onBatch?(checkpoint: RowCheckpoint): void; shouldStop?(): boolean },
    private readonly client: PoolClient,
    private readonly keks: Kek[],
  ) {
    this.cursor = input.after;
    this.counters = deps.rows.fields.map(() => emptyFieldCounters());
    this.keys = deps.fieldIndexes.map((i) => RowFieldsStore.progressKey(input.progressKey, i));
    this.legacy = deps.rows.fields.map((f) => f.legacy);
    this.current = deps.rows.fields.map((f) => f.current);
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
      const writes: FieldsWrite[] = [];
      const unreadable = store.fields.map(() => 0);
      const deks = await this.loadDeks(rows);
      try {
        for (const row of rows) {
          const write = this.migrate(row, deks.get(row.tenant), unreadable);
          if (write) writes.push(write);
        }
      } finally {
        // A batch's DEKs are released once it is sealed: the next batch is other tenants.
        for (const dek of deks.values()) if (typeof dek !== 'string') release(dek);
      }
      const last = rows[rows.length - 1]!.id;
      if (input.dryRun) {
        for (const write of writes) write.value.forEach((v, i) => v !== null && (this.counters[i]!.migrated += 1));
      } else {
        const lost = await store.compareAndSwap(this.client, writes, { keys: this.keys, unreadable, cursor: last });
        for (const write of writes) {
          const won = !lost.has(write.id);
          write.value.forEach((v, i) => {
            if (v === null) return;
            if (won) this.counters[i]!.migrated += 1;
            else this.counters[i]!.casConflicts += 1;
          });
        }
      }
      unreadable.forEach((n, i) => (this.counters[i]!.unreadable += n));
      this.cursor = last;
      this.hooks.onBatch?.({ cursor: this.cursor, counters: this.counters });
    }
    if (done && !input.dryRun) await store.markDone(this.client, this.keys);
    return this.result(done);
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

  /** The DEK of every tenant of the batch (a schedule), provisioning those that have none; or why it has none. */
  private async loadDeks(rows: FieldsRow[]): Promise<Map<string, AeadKey | string>> {
    const { deks: store } = this.deps;
    const wanted = [...new Set(rows.map((r) => r.tenant))];
    const byId = (found: TargetRow[]) => new Map(found.map((r) => [r.$id, r]));
    let found = byId(await store.readByIds(this.client, wanted));
    const missing = wanted.filter((t) => !found.has(t));
    if (missing.length > 0 && !this.input.dryRun) {
      const fresh = new Map(missing.map((t) => [t, randomBytes(KEY_BYTES)]));
      try {
        const current = this.keks[0]!;
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
    const deks = new Map<string, AeadKey | string>();
    for (const tenant of wanted) {
      const row = found.get(tenant);
      if (!row) {
        deks.set(
          tenant,
          this.input.dryRun
            ? WOULD_PROVISION
            : `tenant ${tenant} has no row in ${store.table}: there is no DEK to encrypt it under`,
        );
        continue;
      }
      deks.set(tenant, this.unwrap(row));
    }
    return deks;
  }

  private unwrap(row: TargetRow): AeadKey | string {
    const reasons: string[] = [];
    for (const kek of this.keks) {
      let dek: Buffer;
      try {
        dek = this.deps.deks.codec.open(kek.key, row, row.$label);
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        reasons.push(`'${kek.kekId}': ${err.reason}`);
        continue;
      }
      const schedule = scheduleKey(dek);
      // A native schedule holds its own copy: the raw bytes go at once.
      if (schedule !== dek) dek.fill(0);
      return schedule;
    }
    return `tenant ${row.$id}'s DEK does not unwrap under any KEK held (${reasons.join('; ')})`;
  }

  /** The row's write (the fields sealed under its tenant's DEK), or undefined when none of its fields can be. */
  private migrate(row: FieldsRow, dek: AeadKey | string | undefined, unreadable: number[]): FieldsWrite | undefined {
    const { rows: store } = this.deps;
    const old: (string | null)[] = [];
    const value: (string | null)[] = [];
    row.values.forEach((stored, i) => {
      old.push(null);
      value.push(null);
      if (stored === null) return;
      const sealed = this.field(row, i, stored, dek);
      if (sealed.ok) {
        old[i] = stored;
        value[i] = sealed.value;
        return;
      }
      unreadable[i]! += 1;
      if (this.failures.length < MAX_LISTED) {
        const field = store.fields[i]!;
        this.failures.push({ where: field.where, row: row.id, field: field.field.name, reason: sealed.reason });
      }
    });
    return value.some((v) => v !== null) ? { id: row.id, old, value } : undefined;
  }

  private field(
    row: FieldsRow,
    i: number,
    stored: string,
    dek: AeadKey | string | undefined,
  ): { ok: true; value: string } | { ok: false; reason: string } {
    if (dek === undefined) return { ok: false, reason: `no DEK for tenant ${row.tenant}` };
    if (typeof dek === 'string' && dek !== WOULD_PROVISION) return { ok: false, reason: dek };
    const plaintext = this.openLegacy(row, i, stored);
    if (typeof plaintext === 'string') return { ok: false, reason: plaintext };
    try {
      // A dry run whose tenant has no DEK yet: the value only needs to open.
      if (typeof dek === 'string') return { ok: true, value: '' };
      const [sealed] = this.current[i]!.seal(
        dek,
        plaintext,
        { value: null, tenant: row.tenant },
        '',
        randomBytes(NONCE_BYTES),
      );
      return { ok: true, value: String(sealed) };
    } finally {
      plaintext.fill(0);
    }
  }

  private openLegacy(row: FieldsRow, i: number, stored: string): Buffer | string {
    const legacy = this.legacy[i]!;
    const problem = legacy.check({ value: stored });
    if (problem !== undefined) return problem;
    const reasons: string[] = [];
    for (const kek of this.keks) {
      try {
        return legacy.open(kek.key, { value: stored, tenant: row.tenant }, kek.kekId);
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        reasons.push(`'${kek.kekId}': ${err.reason}`);
      }
    }
    return `does not decrypt under any KEK held (${reasons.join('; ')})`;
  }

  private result(done: boolean): RowSliceResult {
    return { cursor: this.cursor, counters: this.counters, done, failures: this.failures };
  }
}

function release(key: AeadKey): void {
  if (Buffer.isBuffer(key)) key.fill(0);
  else releaseKey(key);
}
