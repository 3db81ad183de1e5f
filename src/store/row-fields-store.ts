// The SQL of `rekey migrate-dek` by row: the encrypted fields of one table that share its id and its tenant (Mycelium's
// two Telegram fields in tenant.meta, its webhook's two secrets) read together, each row once, and written together:
// one jsonb_set chain per row, one compare-and-swap on the values read, counted per field in the same statement into
// each field's progress row (rekey.field_migration_progress, one per part and field, sharing the part's cursor).
import type { Pool, PoolClient } from 'pg';
import { packedArray, type PackedValues } from './binary-arrays';
import { copyOutBinary, literal, parseBinaryCopyFields } from './copy-out';
import type { FieldProgress, FieldRange, FieldStore } from './field-store';
import { quoteIdent } from './migrate';
import type { TargetStore } from './target-store';
import type { Columns } from '../crypto/columns';

/**
 * A batch of rows holding at least one legacy value, by column as the binary COPY brought them (RowFieldsStore.readBatch):
 * ids and tenants as text, each field's legacy value (NULL where that field is not legacy), each row's DEK row.
 */
export interface FieldsBatch {
  count: number;
  ids: PackedValues;
  tenants: PackedValues;
  /** By field of the group, in its order. */
  values: PackedValues[];
  /** The DEK row of each row's tenant: its id (NULL where it holds no DEK, or there is no row), label, read columns. */
  dek: { ids: PackedValues; labels: PackedValues; columns: Columns };
}

/**
 * `sql` with each parameter `$n` outside a quoted literal replaced by `params[n - 1]` as a literal (a COPY takes no
 * parameters; a literal already in the text, such as a fixed tenant, is left as it is).
 */
function withLiterals(sql: string, params: readonly string[]): string {
  return sql.replace(/'(?:[^']|'')*'|\$(\d+)/g, (match, n: string | undefined) =>
    n === undefined ? match : literal(params[Number(n) - 1]!),
  );
}

/** The text of packed value `index` of a column that holds no NULL (a batch's ids). */
function textOf({ lengths, bytes }: PackedValues, index: number): string {
  let offset = 0;
  for (let i = 0; i < index; i++) offset += Math.max(0, lengths[i]!);
  return Buffer.from(bytes.buffer, bytes.byteOffset + offset, lengths[index]).toString('utf8');
}

/** The fields of a target that can be read and written together: same table, same id column, same tenant. */
export function rowGroups(fields: readonly FieldStore[]): number[][] {
  const groups = new Map<string, number[]>();
  fields.forEach((store, index) => {
    const { table, id, tenant } = store.field;
    const key = JSON.stringify([table.schema, table.name, id, tenant]);
    groups.set(key, [...(groups.get(key) ?? []), index]);
  });
  return [...groups.values()];
}

export class RowFieldsStore {
  readonly table: string;

  /** `fields`: inspected stores of one group (see rowGroups). */
  constructor(readonly fields: readonly FieldStore[]) {
    if (fields.length === 0) throw new Error('a row group needs at least one field');
    this.table = fields[0]!.table;
  }

  get db(): Pool {
    return this.fields[0]!.db;
  }

  private get first(): FieldStore {
    return this.fields[0]!;
  }

  /** The progress row of one field of a part. */
  static progressKey(partKey: string, field: number): string {
    return `${partKey}/field-${field}`;
  }

  /**
   * The next rows of a range holding a legacy value in any field of the group, in id order (keyset pagination), each
   * with its tenant's DEK row (`deks`, the target's table): one statement, a binary COPY read by column (no object or
   * string per row). A group whose rows are their own tenants (Mycelium's tenant.meta) reads the DEK from the same
   * row; any other joins the DEK's row by the tenant's id.
   */
  async readBatch(client: PoolClient, range: FieldRange, limit: number, deks: TargetStore): Promise<FieldsBatch> {
    const { first } = this;
    const { sql, params } = first.range(range, 1);
    const tenant = first.field.tenant;
    const own = 'column' in tenant && deks.isOwnId(first.field.table, tenant.column);
    const dek = deks.dekFields(own ? 't' : 'd');
    const values = this.fields.map((f) => `CASE WHEN ${f.legacySql} THEN ${f.valueSql} END`);
    const anyLegacy = this.fields.map((f) => `(${f.legacySql})`).join(' OR ');
    const select = [`${first.id}::text`, first.tenantSql, ...values, ...dek.select];
    // A COPY takes no parameters: the range's values written in as literals.
    const where = withLiterals(sql, params);
    const data = await copyOutBinary(
      client,
      `SELECT ${select.join(', ')} FROM ${this.table} t ${own ? '' : dek.join(first.tenantSql)}
       WHERE (${anyLegacy}) AND ${where} ORDER BY ${first.id} LIMIT ${Math.trunc(limit)}`,
    );
    const { count, fields } = parseBinaryCopyFields(data, select.length);
    const n = this.fields.length;
    return {
      count,
      ids: fields[0]!,
      tenants: fields[1]!,
      values: fields.slice(2, 2 + n),
      dek: dek.packed(fields.slice(2 + n)),
    };
  }

  /** Ids that split the rows holding a legacy value in any field of the group into parts of about equal size. */
  async boundaries(fractions: number[], tenant?: string): Promise<string[]> {
    const { first } = this;
    const { sql, params } = first.range({ after: '', until: null, ...(tenant !== undefined && { tenant }) }, 2);
    const anyLegacy = this.fields.map((f) => `(${f.legacySql})`).join(' OR ');
    const { rows } = await this.db.query<{ boundaries: string[] | null }>(
      `SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY ${first.id})::text[] AS boundaries
       FROM ${this.table} t WHERE (${anyLegacy}) AND ${sql}`,
      [fractions, ...params],
    );
    return rows[0]?.boundaries ?? [];
  }

  /**
   * One statement: writes each row `writes.indexes` of the batch where every field it writes still holds what was
   * read (one compare-and-swap on the old values; a live writer that replaced any of them wins the whole row), and
   * adds the batch to each field's progress row (migrated, lost to a live writer, unreadable, cursor). Ids, old and
   * new values go as binary arrays copied from the packed columns (text, and a uuid id as its 16 bytes). Returns the
   * ids not written.
   */
  async compareAndSwap(
    client: Pool | PoolClient,
    batch: FieldsBatch,
    writes: { indexes: Int32Array; values: PackedValues[] },
    progress: { keys: string[]; unreadable: number[]; cursor: string },
  ): Promise<Set<string>> {
    const n = this.fields.length;
    const count = writes.indexes.length;
    const columns = this.fields.map((_, i) => `old${i}, new${i}`).join(', ');
    const arrays = this.fields.map((_, i) => `$${2 + 2 * i}::text[], $${3 + 2 * i}::text[]`).join(', ');
    // One assignment per column: a chain of jsonb_set over the fields of that column, each only where it is written.
    const byColumn = new Map<string, string>();
    this.fields.forEach((f, i) => {
      const column = quoteIdent(f.field.column);
      const current = byColumn.get(column) ?? `t.${column}`;
      byColumn.set(
        column,
        f.field.path
          ? `CASE WHEN v.new${i} IS NULL THEN ${current} ELSE jsonb_set(${current}, ${f.pathSql}, to_jsonb(v.new${i})) END`
          : `COALESCE(v.new${i}, ${current})`,
      );
    });
    const set = [...byColumn].map(([column, value]) => `${column} = ${value}`).join(', ');
    const unchanged = this.fields.map((f, i) => `(v.new${i} IS NULL OR ${f.valueSql} = v.old${i})`).join(' AND ');
    const written = this.fields.map((_, i) => `count(*) FILTER (WHERE v.new${i} IS NOT NULL)`).join(', ');
    const attempted = writes.values.map((column) => column.lengths.reduce((k, length) => k + (length >= 0 ? 1 : 0), 0));
    const every = Int32Array.from({ length: count }, (_, i) => i);
    const p = 2 + 2 * n;
    // A uuid id goes as a binary uuid[] (no uuid_in per row in the server); the rows that lost come back as text.
    const uuid = this.first.idSqlType === 'uuid';
    const ids = uuid ? '$1::uuid[]' : '$1::text[]';
    // The batch's first and last id (it was read in id order), so that the rows are found by one range scan of the
    // primary key joined by hash, as the floor's UPDATE finds them, rather than one index lookup per row: the same
    // rows, since every id written lies between them.
    const type = this.first.idSqlType;
    const within = `${this.first.id} >= $${p + 4}::${type} AND ${this.first.id} <= $${p + 5}::${type}`;
    const { rows } = await client.query<{ lost: string[] | null }>(
      `WITH v AS (SELECT * FROM unnest(${ids}, ${arrays}) AS v(id, ${columns})),
       w AS (
         UPDATE ${this.table} t SET ${set} FROM v
         WHERE ${this.first.id} = ${uuid ? 'v.id' : `v.id::${this.first.idSqlType}`} AND ${within} AND ${unchanged}
         RETURNING ${this.first.id}${uuid ? '' : '::text'} AS id),
       m AS (SELECT ARRAY[${written}]::bigint[] AS migrated FROM w JOIN v ON v.id = w.id),
       k AS (SELECT * FROM unnest($${p}::text[], $${p + 1}::bigint[], $${p + 2}::bigint[])
             WITH ORDINALITY AS k(key, attempted, unreadable, i)),
       p AS (
         UPDATE rekey.field_migration_progress f SET
           migrated = f.migrated + m.migrated[k.i],
           cas_conflicts = f.cas_conflicts + k.attempted - m.migrated[k.i],
           unreadable = f.unreadable + k.unreadable, cursor = $${p + 3}, updated_at = now()
         FROM k, m WHERE f.progress_key = k.key)
       SELECT CASE WHEN (SELECT count(*) FROM w) = ${count} THEN NULL
         ELSE (SELECT array_agg(x::text) FROM unnest(${ids}) AS x WHERE x NOT IN (SELECT id FROM w)) END AS lost`,
      [
        packedArray(batch.ids, writes.indexes, uuid ? 'uuid' : 'text'),
        ...this.fields.flatMap((_, i) => [
          packedArray(batch.values[i]!, writes.indexes, 'text'),
          packedArray(writes.values[i]!, every, 'text'),
        ]),
        progress.keys,
        attempted,
        progress.unreadable,
        progress.cursor,
        textOf(batch.ids, 0),
        textOf(batch.ids, batch.count - 1),
      ],
    );
    return new Set(rows[0]?.lost ?? []);
  }

  /** Each field's progress of a part, or undefined before its first attempt. */
  async readProgress(client: Pool | PoolClient, keys: string[]): Promise<FieldProgress[] | undefined> {
    const all = await Promise.all(keys.map((key, i) => this.fields[i]!.readProgress(client, key)));
    return all.some((p) => p === undefined) ? undefined : (all as FieldProgress[]);
  }

  async createProgress(client: Pool | PoolClient, keys: string[], cursor: string, alreadyCurrent: number[]) {
    for (const [i, key] of keys.entries()) {
      await this.fields[i]!.createProgress(client, key, cursor, alreadyCurrent[i] ?? 0);
    }
  }

  async markDone(client: Pool | PoolClient, keys: string[]): Promise<void> {
    await client.query(
      'UPDATE rekey.field_migration_progress SET done = true, updated_at = now() WHERE progress_key = ANY($1::text[])',
      [keys],
    );
  }
}
