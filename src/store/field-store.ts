// The SQL of `rekey migrate-dek`: one encrypted field of a target (a column, or a path inside a jsonb column) read in
// id order, legacy values only; compare-and-swap writes of the migrated values, counted in the same statement; and
// the migration's progress rows (rekey.field_migration_progress).
import type { Pool, PoolClient } from 'pg';
import { compileFormat, type Codec } from '../codec/sealed-format';
import { describeTable, type EncryptedField } from '../targets/target';
import { quoteIdent } from './migrate';
import { fieldNeeds, SchemaCheck } from './schema-check';
import { idRangeSql, type IdRange } from './target-store';
import type { FieldCounters } from '../rewrap/field-counters';

export type { FieldCounters } from '../rewrap/field-counters';
import { TargetSchemaError } from '../errors';

/** A legacy value as read: its row, the tenant whose DEK it goes under, the stored text. */
export interface FieldRow {
  id: string;
  tenant: string;
  value: string;
}

/** A range of row ids, and optionally one tenant: only the values under that tenant's DEK (`--tenant-id`). */
export interface FieldRange extends IdRange {
  tenant?: string;
}

export interface FieldWrite {
  id: string;
  /** The value as read: the write happens only if it is still there (a live writer that replaced it wins). */
  old: string;
  value: string;
}

export interface FieldProgress {
  cursor: string | null;
  done: boolean;
  counters: FieldCounters;
}

function literal(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

export class FieldStore {
  readonly table: string;
  private idType: string | undefined;
  private tenantType: string | undefined;
  /** The stored text of the field, as an SQL expression over alias t (RowFieldsStore composes these). */
  readonly valueSql: string;
  /** True where the field holds a legacy value. */
  readonly legacySql: string;
  readonly tenantSql: string;
  /** The field's two forms, compiled once: the legacy one (under the KEK) and the current one (under a DEK). */
  readonly legacy: Codec;
  readonly current: Codec;

  constructor(
    readonly db: Pool,
    readonly target: string,
    readonly field: EncryptedField,
  ) {
    this.table = `${quoteIdent(field.table.schema)}.${quoteIdent(field.table.name)}`;
    const column = `t.${quoteIdent(field.column)}`;
    this.valueSql = field.path ? `${column} #>> ${this.pathSql}` : column;
    const { value } = field.current;
    if (value.kind !== 'combined' || !value.prefix) {
      throw new TargetSchemaError(
        `target '${target}', field ${field.name}: its current form needs a prefix (such as 'v2:') that tells it from the legacy one`,
      );
    }
    this.legacySql = `${this.valueSql} IS NOT NULL AND left(${this.valueSql}, ${value.prefix.length}) <> ${literal(value.prefix)}`;
    this.legacy = compileFormat(field.legacy);
    this.current = compileFormat(field.current);
    this.tenantSql =
      'column' in field.tenant ? `t.${quoteIdent(field.tenant.column)}::text` : literal(field.tenant.fixed);
  }

  /** Where the field is, for messages: `public.user.mfa → totp.enabled.secret`. */
  get where(): string {
    return `${describeTable(this.field.table)}.${this.field.column}${this.field.path ? ` → ${this.field.path.join('.')}` : ''}`;
  }

  get pathSql(): string {
    return `ARRAY[${this.field.path!.map(literal).join(', ')}]::text[]`;
  }

  get id(): string {
    return `t.${quoteIdent(this.field.id)}`;
  }

  /** The SQL type of the row id, as inspect() found it. */
  get idSqlType(): string {
    if (!this.idType) throw new Error(`field ${this.field.name}: call inspect() before using the store`);
    return this.idType;
  }

  /** The table and its columns exist with usable types: checked before anything is read or written. */
  async inspect(): Promise<void> {
    const { field } = this;
    const check = new SchemaCheck().need(field.table, `field ${field.name}`, fieldNeeds(field));
    const types = (await check.run(this.db)).get(describeTable(field.table));
    if (!check.passed || !types) throw check.error(this.target);
    this.idType = types.get(field.id)!.typname;
    if ('column' in field.tenant) this.tenantType = types.get(field.tenant.column)!.typname;
  }

  /** The id range, and the tenant if one is named (a field of a fixed tenant holds nothing of another). */
  range(range: FieldRange, first: number): { sql: string; params: string[] } {
    const ids = idRangeSql(this.id, this.idSqlType, range, first);
    if (range.tenant === undefined) return ids;
    const param = `$${first + ids.params.length}`;
    const tenant =
      'column' in this.field.tenant
        ? `t.${quoteIdent(this.field.tenant.column)} = ${param}::${this.tenantType}`
        : `lower(${this.tenantSql}) = lower(${param})`;
    return { sql: `${ids.sql} AND ${tenant}`, params: [...ids.params, range.tenant] };
  }

  /** The next legacy values of a range, in id order (keyset pagination). */
  async readLegacy(client: Pool | PoolClient, range: FieldRange, limit: number): Promise<FieldRow[]> {
    const { sql, params } = this.range(range, 1);
    const { rows } = await client.query<FieldRow>(
      `SELECT ${this.id}::text AS id, ${this.tenantSql} AS tenant, ${this.valueSql} AS value FROM ${this.table} t
       WHERE ${this.legacySql} AND ${sql} ORDER BY ${this.id} LIMIT ${Math.trunc(limit)}`,
      params,
    );
    return rows;
  }

  /** Legacy and current values in a range (all rows without one). */
  async count(client: Pool | PoolClient = this.db, range: FieldRange = { after: '', until: null }) {
    const { sql, params } = this.range(range, 1);
    const { rows } = await client.query<{ legacy: string; total: string }>(
      `SELECT count(*) FILTER (WHERE ${this.legacySql}) AS legacy, count(${this.valueSql}) AS total
       FROM ${this.table} t WHERE ${sql}`,
      params,
    );
    const legacy = Number(rows[0]?.legacy ?? 0);
    return { legacy, current: Number(rows[0]?.total ?? 0) - legacy };
  }

  /** Legacy values per tenant, most first (the dry run's list). */
  async legacyByTenant(limit: number, tenant?: string): Promise<{ tenant: string; legacy: number }[]> {
    const { sql, params } = this.range({ after: '', until: null, ...(tenant !== undefined && { tenant }) }, 1);
    const { rows } = await this.db.query<{ tenant: string; legacy: string }>(
      `SELECT ${this.tenantSql} AS tenant, count(*) AS legacy FROM ${this.table} t WHERE ${this.legacySql} AND ${sql}
       GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ${Math.trunc(limit)}`,
      params,
    );
    return rows.map((r) => ({ tenant: r.tenant, legacy: Number(r.legacy) }));
  }

  /** Ids that split the rows holding legacy values into parts of about equal size. */
  async boundaries(fractions: number[], tenant?: string): Promise<string[]> {
    const { sql, params } = this.range({ after: '', until: null, ...(tenant !== undefined && { tenant }) }, 2);
    const { rows } = await this.db.query<{ boundaries: string[] | null }>(
      `SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY ${this.id})::text[] AS boundaries
       FROM ${this.table} t WHERE ${this.legacySql} AND ${sql}`,
      [fractions, ...params],
    );
    return rows[0]?.boundaries ?? [];
  }

  /**
   * One statement: writes each value where the field still holds what was read, and adds the batch to its progress
   * row (migrated, lost to a live writer, unreadable, cursor). Returns the ids not written.
   */
  async compareAndSwap(
    client: Pool | PoolClient,
    writes: FieldWrite[],
    progress: { progressKey: string; cursor: string; unreadable: number },
  ): Promise<Set<string>> {
    const column = quoteIdent(this.field.column);
    const set = this.field.path
      ? `${column} = jsonb_set(t.${column}, ${this.pathSql}, to_jsonb(v.value))`
      : `${column} = v.value`;
    const { rows } = await client.query<{ id: string }>(
      `WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, old, value)),
       w AS (
         UPDATE ${this.table} t SET ${set} FROM v
         WHERE ${this.id} = v.id::${this.idSqlType} AND ${this.valueSql} = v.old
         RETURNING ${this.id}::text AS id),
       p AS (
         UPDATE rekey.field_migration_progress SET
           migrated = migrated + (SELECT count(*) FROM w),
           cas_conflicts = cas_conflicts + $4 - (SELECT count(*) FROM w),
           unreadable = unreadable + $5, cursor = $6, updated_at = now()
         WHERE progress_key = $7)
       SELECT id FROM w`,
      [
        writes.map((w) => w.id),
        writes.map((w) => w.old),
        writes.map((w) => w.value),
        writes.length,
        progress.unreadable,
        progress.cursor,
        progress.progressKey,
      ],
    );
    const written = new Set(rows.map((r) => r.id));
    return new Set(writes.map((w) => w.id).filter((id) => !written.has(id)));
  }

  async readProgress(client: Pool | PoolClient, progressKey: string): Promise<FieldProgress | undefined> {
    const { rows } = await client.query<Record<string, string | boolean | null>>(
      'SELECT * FROM rekey.field_migration_progress WHERE progress_key = $1',
      [progressKey],
    );
    const row = rows[0];
    if (!row) return undefined;
    return {
      cursor: row.cursor as string | null,
      done: row.done as boolean,
      counters: {
        migrated: Number(row.migrated),
        alreadyCurrent: Number(row.already_current),
        unreadable: Number(row.unreadable),
        casConflicts: Number(row.cas_conflicts),
        deksProvisioned: Number(row.deks_provisioned),
      },
    };
  }

  async createProgress(client: Pool | PoolClient, progressKey: string, cursor: string, alreadyCurrent: number) {
    await client.query(
      `INSERT INTO rekey.field_migration_progress (progress_key, target, field, cursor, already_current)
       VALUES ($1, $2, $3, $4, $5) ON CONFLICT (progress_key) DO NOTHING`,
      [progressKey, this.target, this.field.name, cursor, alreadyCurrent],
    );
  }

  async markDone(client: Pool | PoolClient, progressKey: string): Promise<void> {
    await client.query(
      'UPDATE rekey.field_migration_progress SET done = true, updated_at = now() WHERE progress_key = $1',
      [progressKey],
    );
  }
}
