// Every statement rekey runs against a target's table, generated from its definition. Identifiers come from a
// checked configuration (plain SQL identifiers) and are quoted; values are always parameters.
import type { Pool, PoolClient } from 'pg';
import type { Codec, ColumnValue, Row } from '../codec/sealed-format';
import { describeTable, type TargetDefinition } from '../targets/target';
import type { Column, Columns } from '../crypto/columns';
import {
  integerArray,
  isIntegerType,
  packedArray,
  textArray,
  uuidArray,
  type IntegerType,
  type PackedValues,
} from './binary-arrays';
import { checkout } from './connect';
import { copyOutBinary, literal, parseBinaryCopy, parseBinaryCopyFields, type CopyColumn } from './copy-out';
import { quoteIdent } from './migrate';
import { refusedAsError } from './tenant-deks';
import { ddlType, fieldNeeds, SchemaCheck, type ColumnInfo, type ColumnNeed } from './schema-check';
import { InvalidRotationError, KekNotWritableError } from '../errors';

/** A row read for rewrap: the target's own columns by name, plus rekey's. */
export interface TargetRow extends Row {
  /** The row id, as text. */
  readonly $id: string;
  /** The KEK label, as text (a generation's number). */
  readonly $label: string;
  /** The version token, as text; absent when the stored value is the token. */
  readonly $token?: string;
}

export interface RowWrite {
  id: string;
  /** The version read (version tokens) or the row as read (stored-value tokens). */
  row: TargetRow;
  /** New values for the codec's write columns, in its order. */
  values: ColumnValue[];
  /** The row's value was already under `to` (mislabelled); only its label (and binding) change. */
  relabel: boolean;
}

export interface CasOutcome {
  /** Ids not written: they lost the race to another writer (usually none). */
  lost: Set<string>;
  /** Rows written. */
  written: number;
  relabelled: number;
}

export interface ProgressDelta {
  progressKey: string;
  /** The slice's cursor after this batch (null: unchanged). */
  cursor: string | null;
  /** Rows in the batch that did not decrypt: counted in the same statement as the batch's writes. */
  failed: number;
}

/**
 * A batch of rows labelled with one KEK, read by column (TargetStore.readColumns): the ids, the version tokens and the
 * codec's read columns packed as a binary COPY brings them, with no object or string per row.
 */
export interface ColumnBatch {
  readonly count: number;
  /** The ids as text (UTF-8), in id order. */
  readonly ids: PackedValues;
  /** The version tokens as the column's big-endian integers (targets with a version column). */
  readonly tokens?: PackedValues;
  /** The codec's read columns: bytea as bytes, text as UTF-8 ('text'). */
  readonly columns: Columns;
}

/** The id of row `index` of a batch. */
export function batchId(batch: ColumnBatch, index: number): string {
  const { lengths, bytes } = batch.ids;
  let offset = 0;
  for (let i = 0; i < index; i++) offset += Math.max(0, lengths[i]!);
  return Buffer.from(bytes.buffer, bytes.byteOffset + offset, Math.max(0, lengths[index]!)).toString('utf8');
}

/** What a rewrap by column gives (RowCrypto.rewrapColumns): the rows to write, by index, and their new values. */
export interface ColumnWrites {
  /** The written rows' indexes in the batch, ascending. */
  indexes: Int32Array;
  /** 1 where the row was already under `to` (relabelled). */
  relabel: Uint8Array;
  /** Each of the codec's write columns: the new values, one per written row. */
  values: Column[];
}

/** A column of values as a compare-and-swap parameter: a binary text[], or the bytes one after another. */
type ValueParam = { kind: 'text'; array: Buffer } | { kind: 'bytes'; joined: Buffer; lengths: ArrayLike<number> };

function valueParam(values: ColumnValue[]): ValueParam {
  if (values.length === 0 || typeof values[0] === 'string')
    return { kind: 'text', array: textArray(values as string[]) };
  const buffers = values as Buffer[];
  return { kind: 'bytes', joined: Buffer.concat(buffers), lengths: buffers.map((b) => b.length) };
}

/** The values `which` of packed bytes, one after another. */
function bytesParam(values: PackedValues, which: ArrayLike<number>): ValueParam {
  const { lengths, bytes } = values;
  const starts = new Int32Array(lengths.length);
  let total = 0;
  for (let i = 0; i < lengths.length; i++) {
    starts[i] = total;
    total += Math.max(0, lengths[i]!);
  }
  const picked = new Int32Array(which.length);
  let size = 0;
  for (let i = 0; i < which.length; i++) {
    const length = lengths[which[i]!]!;
    if (length < 0) throw new RangeError('a NULL among the values of a compare-and-swap');
    picked[i] = length;
    size += length;
  }
  if (which.length === lengths.length && size === bytes.length) {
    return { kind: 'bytes', joined: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), lengths: picked };
  }
  const joined = Buffer.allocUnsafe(size);
  let offset = 0;
  for (let i = 0; i < which.length; i++) {
    const start = starts[which[i]!]!;
    joined.set(bytes.subarray(start, start + picked[i]!), offset);
    offset += picked[i]!;
  }
  return { kind: 'bytes', joined, lengths: picked };
}

/** A compare-and-swap's values, as parameters. */
interface CasParams {
  count: number;
  /** The rows' ids (an array of TargetStore.idElement's type), in id order; the first and the last. */
  ids: Buffer;
  first: string;
  last: string;
  /** The relabelled rows' ids (as `ids`). */
  relabelIds: Buffer;
  /** Each row's label as read (text[]), when they are not all `from`. */
  labels?: Buffer;
  /** The version tokens as read (an integer array), for a version compare-and-swap. */
  tokens?: Buffer;
  /** The stored value's columns as read, for a stored-value compare-and-swap. */
  old?: ValueParam[];
  /** The new values of the codec's write columns. */
  news: ValueParam[];
}

/**
 * Which rows a scan reads: those labelled with a KEK; those labelled with neither KEK of the rotation (a rewrap of the
 * others); or every row not labelled with a KEK, a NULL label included (the retire and destroy proofs' rows a label
 * does not name: a label can lie, or be missing).
 */
export type Scan =
  | { kind: 'label'; kekId: string; changedSince?: string }
  | { kind: 'others'; from: string; to: string }
  | { kind: 'not-label'; kekId: string; changedSince?: string; provedUnder?: ProvedUnder };

/**
 * Rows an earlier check proved: those labelled `label` whose current version was written before `mark` (a change
 * mark) are left out of a scan (verify's proof of the rows labelled `to`, reused by retire's pre-pass: docs/13).
 */
export interface ProvedUnder {
  label: string;
  mark: string;
}

/**
 * What a scan restricted to the rows written since a mark (TargetStore.changeMark) adds to its WHERE: the row's xmin
 * (the 32-bit id of the transaction that wrote its current version) is at or after the mark's, modulo 2^32, as
 * PostgreSQL itself compares transaction ids. Over-inclusive only: a frozen row whose raw xmin happens to fall in the
 * window is read again, never a row written since left out.
 */
export function changedSinceSql(alias: string, mark: string): string {
  const low = BigInt(mark) % 4294967296n;
  return `((${alias}.xmin::text::bigint - ${low.toString()} + 4294967296) % 4294967296) < 2147483648`;
}

/**
 * The least of `next` (a 64-bit transaction id) and the 64-bit ids of `running` (32-bit ids, as pg_stat_activity and
 * pg_prepared_xacts show them), each read as the id in the 2^31 before `next` it stands for; one at or after `next`
 * (assigned after `next` was read) does not lower it.
 */
export function oldestRunning(next: bigint, running: string[]): bigint {
  let oldest = next;
  const low = next % 4294967296n;
  for (const xid of running) {
    const behind = (low - BigInt(xid) + 4294967296n) % 4294967296n;
    if (behind === 0n || behind > 2147483648n) continue;
    if (next - behind < oldest) oldest = next - behind;
  }
  return oldest;
}

export interface IdRange {
  /** Exclusive lower bound; '' = from the start. */
  after: string;
  /** Inclusive upper bound; null = to the end. */
  until: string | null;
}

/**
 * `id > after AND id <= until` over the id expression `id` (of SQL type `type`), with parameters from `first` on;
 * '' and null leave a side open.
 */
export function idRangeSql(id: string, type: string, range: IdRange, first: number): { sql: string; params: string[] } {
  const parts: string[] = [];
  const params: string[] = [];
  if (range.after !== '') {
    params.push(range.after);
    parts.push(`${id} > $${first + params.length - 1}::${type}`);
  }
  if (range.until !== null) {
    params.push(range.until);
    parts.push(`${id} <= $${first + params.length - 1}::${type}`);
  }
  return { sql: parts.length > 0 ? parts.join(' AND ') : 'true', params };
}

const TEXT = 'S';
const INTEGER_TYPES = ['int2', 'int4', 'int8'];
const TIME_TYPES = ['timestamp', 'timestamptz', 'date'];

/** Rows, counts and compare-and-swap writes of one target's table, and the target's rewrap progress rows. */
export class TargetStore {
  readonly table: string;
  private readonly q: Record<string, string> = {};
  private types: Map<string, ColumnInfo> | undefined;
  private readonly valueColumn: string;

  constructor(
    readonly db: Pool,
    readonly target: TargetDefinition,
    readonly codec: Codec,
  ) {
    this.table = `${quoteIdent(target.table.schema)}.${quoteIdent(target.table.name)}`;
    const { value } = target.format;
    this.valueColumn = value.kind === 'combined' ? value.column : value.ciphertext;
  }

  private col(name: string): string {
    return (this.q[name] ??= quoteIdent(name));
  }

  private type(name: string): string {
    const info = this.types?.get(name);
    if (!info) throw new Error(`target '${this.target.name}': call inspect() before using the store`);
    return info.type;
  }

  /**
   * Checks that the table exists and every column the definition names is there with a usable type, its probe's
   * timestamp column included, and so are the tables of its encrypted fields. Before anything is written: every
   * missing table or column, and every wrong type, is refused at once, with the DDL the definition expects.
   */
  async inspect(): Promise<void> {
    const { target } = this;
    const check = new SchemaCheck().need(target.table, '', targetNeeds(target, this.codec));
    for (const field of target.fields ?? []) check.need(field.table, `field ${field.name}`, fieldNeeds(field));
    const { rows: db } = await this.db.query<{ name: string }>('SELECT current_database() AS name');
    const found = await check.run(this.db, (table, purposes) =>
      purposes.includes('')
        ? `table ${describeTable(table)} does not exist in database ${db[0]?.name ?? '?'} (check the target's table, or the database it points at)`
        : `${describeTable(table)} does not exist (${purposes.join(', ')})`,
    );
    if (!check.passed) throw check.error(target.name);
    this.types = found.get(describeTable(target.table));
  }

  /**
   * SELECT list of a rewrap read: rekey's aliases, then every column the codec reads, under its own name. A read of
   * rows on one KEK leaves out the label it already knows; the id is read once even when the codec reads it too.
   */
  private selectList(withLabel = true): string {
    return this.selected(withLabel).sql;
  }

  /** The SELECT list, and how each of its fields is read from a binary COPY (text, or a bytea's bytes). */
  private selected(withLabel: boolean): { sql: string; columns: CopyColumn[] } {
    const { target } = this;
    const parts = [`t.${this.col(target.id)}::text AS "$id"`];
    // The codec may read the id too, under its own name: the same value.
    const columns: CopyColumn[] = [
      { name: '$id', bytes: false, ...(this.codec.readColumns.includes(target.id) && { also: target.id }) },
    ];
    if (withLabel) {
      parts.push(`t.${this.col(target.label.column)}::text AS "$label"`);
      columns.push({ name: '$label', bytes: false });
    }
    if (target.cas.kind === 'version') {
      parts.push(`t.${this.col(target.cas.column)}::text AS "$token"`);
      columns.push({ name: '$token', bytes: false });
    }
    const bytea = target.format.value.encoding === 'bytea';
    for (const column of this.codec.readColumns) {
      if (column === target.id) continue;
      const isBytea = bytea && this.type(column) === 'bytea';
      parts.push(isBytea ? `t.${this.col(column)}` : `t.${this.col(column)}::text AS ${this.col(column)}`);
      columns.push({ name: column, bytes: isBytea });
    }
    return { sql: parts.join(', '), columns };
  }

  /** Rows as the codec wants them: the id under its own name too, when the codec reads it. */
  private complete(rows: TargetRow[], label?: string): TargetRow[] {
    const id = this.target.id;
    const idRead = this.codec.readColumns.includes(id);
    if (!idRead && label === undefined) return rows;
    for (const row of rows as Record<string, unknown>[]) {
      if (idRead) row[id] = row.$id;
      if (label !== undefined) row.$label = label;
    }
    return rows;
  }

  /** An integer column's type as binary arrays name it (inspect() allows only these for versions). */
  private integerType(name: string): IntegerType {
    const typname = this.types?.get(name)?.typname ?? '';
    if (!isIntegerType(typname)) throw new Error(`target '${this.target.name}': ${name} is not an integer column`);
    return typname;
  }

  /**
   * How a compare-and-swap sends ids: a uuid column's as a binary uuid[] (PostgreSQL's uuid_in, one strtoul per byte,
   * was 9% of its CPU in a rewrap of Mycelium's table), any other as a binary text[] cast to the column's type.
   */
  private idElement(): 'uuid' | 'text' {
    return this.types?.get(this.target.id)?.typname === 'uuid' ? 'uuid' : 'text';
  }

  private labelParam(n: number): string {
    return `$${n}::${this.type(this.target.label.column)}`;
  }

  private idCast(expression: string): string {
    return `${expression}::${this.type(this.target.id)}`;
  }

  /** `id > after AND id <= until` from parameter `first` on; '' and null leave a side open. */
  private rangeSql(range: IdRange, first: number): { sql: string; params: string[] } {
    return idRangeSql(`t.${this.col(this.target.id)}`, this.type(this.target.id), range, first);
  }

  /**
   * The next rows of a scan, in id order (keyset pagination): rows labelled `kekId`, or, for a scan of the others,
   * rows labelled with neither `from` nor `to` (a label can lie: such a row may still be under `from`), or every row not
   * labelled `kekId` (NULL included). Read with a binary COPY (src/store/copy-out.ts), its values written into the query as literals.
   */
  async readBatch(
    client: PoolClient | Pool,
    scan: Scan,
    range: IdRange,
    limit: number,
    onlyId?: string,
  ): Promise<TargetRow[]> {
    const { sql, columns } = this.selected(scan.kind !== 'label');
    const data = await this.copyOut(client, this.scanSelect(sql, scan, range, limit, onlyId));
    return parseBinaryCopy(
      data,
      columns,
      scan.kind === 'label' ? { name: '$label', value: scan.kekId } : undefined,
    ) as unknown as TargetRow[];
  }

  /**
   * The next rows labelled `kekId` as readBatch reads them, by column (ColumnBatch): what the rewrap hands its crypto
   * threads and builds its compare-and-swap from. The version comes as the column's own binary integer, the other
   * fields as readBatch reads them.
   */
  async readColumns(
    client: PoolClient | Pool,
    kekId: string,
    range: IdRange,
    limit: number,
    onlyId?: string,
  ): Promise<ColumnBatch> {
    const { target, codec } = this;
    const parts = [`t.${this.col(target.id)}::text`];
    if (target.cas.kind === 'version') parts.push(`t.${this.col(target.cas.column)}`);
    const bytea = target.format.value.encoding === 'bytea';
    const read = codec.readColumns.filter((column) => column !== target.id);
    const isBytea = read.map((column) => bytea && this.type(column) === 'bytea');
    read.forEach((column, i) => parts.push(isBytea[i] ? `t.${this.col(column)}` : `t.${this.col(column)}::text`));
    const data = await this.copyOut(
      client,
      this.scanSelect(parts.join(', '), { kind: 'label', kekId }, range, limit, onlyId),
    );
    const { count, fields } = parseBinaryCopyFields(data, parts.length);
    const ids = fields[0]!;
    const tokens = target.cas.kind === 'version' ? fields[1] : undefined;
    const first = tokens ? 2 : 1;
    const columns: Columns['columns'] = {};
    for (const column of codec.readColumns) {
      const i = read.indexOf(column);
      columns[column] =
        i < 0 ? { kind: 'text', column: ids } : { kind: isBytea[i] ? 'bytes' : 'text', column: fields[first + i]! };
    }
    return { count, ids, ...(tokens && { tokens }), columns: { count, columns } };
  }

  /**
   * For a read of another table's rows that brings each row's DEK with it (`rekey migrate-dek`: one statement, see
   * RowFieldsStore.readBatch): the DEK row's fields over alias `alias` (its id, NULL where the row holds no wrapped DEK;
   * its label; the codec's read columns but the id), how each is read from a binary COPY, and the join from a tenant
   * id expression. `packed` makes the fields read back into the codec's read columns (the id's under its own name).
   */
  dekFields(alias: string): {
    select: string[];
    bytes: boolean[];
    join: (tenant: string) => string;
    packed: (fields: PackedValues[]) => { ids: PackedValues; labels: PackedValues; columns: Columns };
  } {
    const { target, codec } = this;
    const a = (column: string) => `${alias}.${this.col(column)}`;
    const bytea = target.format.value.encoding === 'bytea';
    const read = codec.readColumns.filter((column) => column !== target.id);
    const isBytea = read.map((column) => bytea && this.type(column) === 'bytea');
    const select = [
      `CASE WHEN ${a(this.valueColumn)} IS NOT NULL THEN ${a(target.id)}::text END`,
      `${a(target.label.column)}::text`,
      ...read.map((column, i) => (isBytea[i] ? a(column) : `${a(column)}::text`)),
    ];
    return {
      select,
      bytes: [false, false, ...isBytea],
      join: (tenant) => `LEFT JOIN ${this.table} ${alias} ON ${a(target.id)} = ${this.idCast(`(${tenant})`)}`,
      packed: (fields) => {
        const columns: Columns['columns'] = {};
        for (const column of codec.readColumns) {
          const i = read.indexOf(column);
          columns[column] =
            i < 0
              ? { kind: 'text', column: fields[0]! }
              : { kind: isBytea[i] ? 'bytes' : 'text', column: fields[2 + i]! };
        }
        return { ids: fields[0]!, labels: fields[1]!, columns: { count: fields[0]!.lengths.length, columns } };
      },
    };
  }

  /** True when `table`.`column` is this table's id: its rows are their own tenants (Mycelium's tenant.meta). */
  isOwnId(table: { schema: string; name: string }, column: string): boolean {
    const { target } = this;
    return table.schema === target.table.schema && table.name === target.table.name && column === target.id;
  }

  /** The SELECT of a scan's next rows, in id order (keyset pagination), its values written in as literals. */
  private scanSelect(list: string, scan: Scan, range: IdRange, limit: number, onlyId?: string): string {
    const label = `t.${this.col(this.target.label.column)}`;
    const labelType = this.type(this.target.label.column);
    const idType = this.type(this.target.id);
    const id = `t.${this.col(this.target.id)}`;
    const which =
      scan.kind === 'label'
        ? `${label} = ${literal(scan.kekId)}::${labelType}`
        : scan.kind === 'not-label'
          ? `(${label} IS NULL OR ${label} <> ${literal(scan.kekId)}::${labelType})`
          : `${label} IS NOT NULL AND ${label} <> ${literal(scan.from)}::${labelType} AND ${label} <> ${literal(scan.to)}::${labelType}`;
    const bounds: string[] = [];
    if (scan.kind !== 'others' && scan.changedSince !== undefined) bounds.push(changedSinceSql('t', scan.changedSince));
    if (scan.kind === 'not-label' && scan.provedUnder !== undefined) {
      const proved = `${literal(scan.provedUnder.label)}::${labelType}`;
      bounds.push(`(${label} IS NULL OR ${label} <> ${proved} OR ${changedSinceSql('t', scan.provedUnder.mark)})`);
    }
    if (onlyId !== undefined) bounds.push(`${id} = ${literal(onlyId)}::${idType}`);
    else {
      if (range.after !== '') bounds.push(`${id} > ${literal(range.after)}::${idType}`);
      if (range.until !== null) bounds.push(`${id} <= ${literal(range.until)}::${idType}`);
    }
    return `SELECT ${list} FROM ${this.table} t
       WHERE ${which} AND t.${this.col(this.valueColumn)} IS NOT NULL${bounds.map((b) => ` AND ${b}`).join('')}
       ORDER BY ${id} LIMIT ${Math.trunc(limit)}`;
  }

  /** A binary COPY of `select`, on the client given or on one of the pool's connections. */
  private async copyOut(client: PoolClient | Pool, select: string): Promise<Buffer> {
    if ('release' in client) return copyOutBinary(client, select);
    // A COPY holds its connection for the whole stream: one of the pool's, returned (or discarded) after.
    const session = await checkout(client);
    try {
      const data = await copyOutBinary(session, select);
      session.release();
      return data;
    } catch (err) {
      session.release(err instanceof Error ? err : true);
      throw err;
    }
  }

  /** Re-reads rows by id, whatever their label (after a lost compare-and-swap). */
  async readByIds(client: PoolClient | Pool, ids: string[]): Promise<TargetRow[]> {
    const { rows } = await client.query<TargetRow>(
      `SELECT ${this.selectList()} FROM ${this.table} t
       WHERE t.${this.col(this.target.id)} = ANY(${this.idCast('$1')}[]) AND t.${this.col(this.valueColumn)} IS NOT NULL
       ORDER BY t.${this.col(this.target.id)}`,
      [ids],
    );
    return this.complete(rows);
  }

  /** In a range: rows already on `to` ("Already done"), and rows on any other KEK or with no value ("Skipped"). */
  async countExisting(
    client: PoolClient | Pool,
    from: string,
    to: string,
    range: IdRange,
    onlyId?: string,
  ): Promise<{ onTarget: number; other: number }> {
    const { sql, params } =
      onlyId === undefined
        ? this.rangeSql(range, 3)
        : { sql: `t.${this.col(this.target.id)} = ${this.idCast('$3')}`, params: [onlyId] };
    const label = `t.${this.col(this.target.label.column)}`;
    const value = `t.${this.col(this.valueColumn)}`;
    const { rows } = await client.query<{ on_target: string; other: string }>(
      `SELECT count(*) FILTER (WHERE ${label} = ${this.labelParam(1)} AND ${value} IS NOT NULL) AS on_target,
              count(*) FILTER (WHERE ${value} IS NULL OR ${label} IS DISTINCT FROM ${this.labelParam(1)}
                               AND ${label} IS DISTINCT FROM ${this.labelParam(2)}) AS other
       FROM ${this.table} t WHERE ${sql}`,
      [to, from, ...params],
    );
    return { onTarget: Number(rows[0]?.on_target ?? 0), other: Number(rows[0]?.other ?? 0) };
  }

  /**
   * One statement: writes the batch where each row is still as read (its version, or its stored value) and still
   * labelled `from`, only while the registry lets `to` wrap (a shared lock on its registry row, which retire takes
   * exclusively), and adds what it did to the slice's progress row. KekNotWritableError when `to` may not wrap.
   * `writes` come in id order, as the store read them: the statement also bounds the rows it looks at by the first
   * and the last id, so that PostgreSQL may read that stretch of the table's index once instead of looking each row
   * up (a write out of that order is not lost: it is not written, and comes back as lost, to be tried again).
   */
  async compareAndSwap(
    client: PoolClient | Pool,
    from: string,
    to: string,
    writes: RowWrite[],
    writable: readonly string[],
    progress?: ProgressDelta,
  ): Promise<CasOutcome> {
    const { target } = this;
    if (writes.length === 0) {
      // Nothing decrypted in this batch: its failures and cursor are still recorded.
      if (progress) await this.recordOnly(client, progress);
      return { lost: new Set(), written: 0, relabelled: 0 };
    }
    // Each row must still carry the label it was read with: `from`, or for a scan of the others, its own.
    const labelled = writes.some((w) => w.row.$label !== from);
    const idArray = this.idElement() === 'uuid' ? uuidArray : textArray;
    const { value } = target.format;
    const stored = value.kind === 'combined' ? [value.column] : [value.ciphertext, value.nonce, value.tag];
    return this.casStatement(
      client,
      from,
      to,
      {
        count: writes.length,
        ids: idArray(writes.map((w) => w.id)),
        first: writes[0]!.id,
        last: writes[writes.length - 1]!.id,
        // Relabelled rows are rare: their ids travel on their own, not as a flag on every row.
        relabelIds: idArray(writes.filter((w) => w.relabel).map((w) => w.id)),
        ...(labelled && { labels: textArray(writes.map((w) => w.row.$label)) }),
        ...(target.cas.kind === 'version' && {
          tokens: integerArray(
            writes.map((w) => w.row.$token!),
            this.integerType(target.cas.column),
          ),
        }),
        ...(target.cas.kind !== 'version' && {
          old: stored.map((column) => valueParam(writes.map((w) => w.row[column] as ColumnValue))),
        }),
        news: this.codec.writeColumns.map((_, i) => valueParam(writes.map((w) => w.values[i]!))),
      },
      writable,
      progress,
    );
  }

  /**
   * The compare-and-swap of compareAndSwap for a batch read by column (readColumns) and rewrapped by column
   * (RowCrypto.rewrapColumns): its parameters are built from the packed columns, with no object or string per row.
   * Every row of such a batch was read labelled `from`.
   */
  async compareAndSwapColumns(
    client: PoolClient | Pool,
    from: string,
    to: string,
    batch: ColumnBatch,
    writes: ColumnWrites,
    writable: readonly string[],
    progress?: ProgressDelta,
  ): Promise<CasOutcome> {
    const { target } = this;
    const count = writes.indexes.length;
    if (count === 0) {
      if (progress) await this.recordOnly(client, progress);
      return { lost: new Set(), written: 0, relabelled: 0 };
    }
    const relabelled: number[] = [];
    for (let i = 0; i < count; i++) if (writes.relabel[i] === 1) relabelled.push(writes.indexes[i]!);
    const { value } = target.format;
    const stored = value.kind === 'combined' ? [value.column] : [value.ciphertext, value.nonce, value.tag];
    const packed = (column: Column, which: ArrayLike<number>): ValueParam =>
      column.kind === 'values'
        ? valueParam(Array.from(which, (i) => column.values[i] as ColumnValue))
        : column.kind === 'text'
          ? { kind: 'text', array: packedArray(column.column, which, 'text') }
          : bytesParam(column.column, which);
    const all = Array.from({ length: count }, (_, i) => i);
    return this.casStatement(
      client,
      from,
      to,
      {
        count,
        ids: packedArray(batch.ids, writes.indexes, this.idElement()),
        first: batchId(batch, writes.indexes[0]!),
        last: batchId(batch, writes.indexes[count - 1]!),
        relabelIds: packedArray(batch.ids, relabelled, this.idElement()),
        ...(target.cas.kind === 'version' && {
          tokens: packedArray(batch.tokens!, writes.indexes, this.integerType(target.cas.column)),
        }),
        ...(target.cas.kind !== 'version' && {
          old: stored.map((column) => packed(batch.columns.columns[column]!, writes.indexes)),
        }),
        news: writes.values.map((column) => packed(column, all)),
      },
      writable,
      progress,
    );
  }

  private async casStatement(
    client: PoolClient | Pool,
    from: string,
    to: string,
    cas: CasParams,
    writable: readonly string[],
    progress?: ProgressDelta,
  ): Promise<CasOutcome> {
    const { target } = this;
    const params: unknown[] = [target.name, to, writable, from];
    const param = (value: unknown) => {
      params.push(value);
      return `$${params.length}`;
    };
    // Arrays go in binary (src/store/binary-arrays.ts): no quoting here, no parsing of array literals there.
    const element = this.idElement();
    const ids = param(cas.ids);
    const unnestArgs = [`${ids}::${element}[]`];
    const unnestNames = ['id'];
    const relabelIds = param(cas.relabelIds);
    const id = `t.${this.col(target.id)}`;
    const conditions = [
      element === 'uuid' ? `${id} = u.id` : `${id} = ${this.idCast('u.id')}`,
      `${id} >= ${this.idCast(param(cas.first))}`,
      `${id} <= ${this.idCast(param(cas.last))}`,
    ];
    if (cas.labels) {
      unnestArgs.push(`${param(cas.labels)}::text[]`);
      unnestNames.push('label');
      conditions.push(`t.${this.col(target.label.column)} = u.label::${this.type(target.label.column)}`);
    } else {
      conditions.push(`t.${this.col(target.label.column)} = ${this.labelParam(4)}`);
    }
    const column = (values: ValueParam, name: string): string => {
      const { expression, arg } = this.valueExpression(values, param, name);
      if (arg) {
        unnestArgs.push(arg);
        unnestNames.push(name);
      }
      return expression;
    };
    if (target.cas.kind === 'version') {
      unnestArgs.push(`${param(cas.tokens)}::${this.type(target.cas.column)}[]`);
      unnestNames.push('token');
      conditions.push(`t.${this.col(target.cas.column)} = u.token`);
    } else {
      // No version column: every stored value column must still hold what was read.
      const { value } = target.format;
      const columns = value.kind === 'combined' ? [value.column] : [value.ciphertext, value.nonce, value.tag];
      columns.forEach((name, i) => conditions.push(`t.${this.col(name)} = ${column(cas.old![i]!, `old${i}`)}`));
    }
    const sets = [
      `${this.col(target.label.column)} = ${this.labelParam(2)}`,
      ...this.codec.writeColumns.map((name, i) => `${this.col(name)} = ${column(cas.news[i]!, `new${i}`)}`),
    ];
    if (target.cas.kind === 'version') {
      sets.push(`${this.col(target.cas.column)} = t.${this.col(target.cas.column)} + 1`);
    }
    for (const column of Object.keys(target.setOnWrite)) sets.push(`${this.col(column)} = now()`);

    let progressSql = '';
    if (progress) {
      const key = param(progress.progressKey);
      const cursor = param(progress.cursor);
      const attempted = param(cas.count);
      const failed = param(progress.failed);
      progressSql = `, progress AS (
           UPDATE rekey.rewrap_progress SET
             cursor = COALESCE(${cursor}::text, cursor),
             rewrapped = rewrapped + (SELECT count(*) FILTER (WHERE NOT relabel) FROM updated),
             relabelled = relabelled + (SELECT count(*) FILTER (WHERE relabel) FROM updated),
             cas_conflicts = cas_conflicts + (${attempted}::int - (SELECT count(*) FROM updated)),
             failed = failed + ${failed}::int,
             updated_at = now()
           WHERE progress_key = ${key})`;
    }
    // The ids that lost come back, not the ones that won: usually none, so nothing to parse.
    // For rekey's own table the database's trigger refuses the same writes the guard does (see kek-may-wrap).
    const { rows } = await refusedAsError(to, () =>
      client.query<{
        kek_state: string | null;
        lost: string[] | null;
        written: string;
        relabelled: string;
      }>(
        `WITH guard AS (
         SELECT state FROM rekey.keks WHERE target = $1 AND kek_id = $2 FOR SHARE
       ), updated AS (
         UPDATE ${this.table} AS t SET ${sets.join(', ')}
         FROM unnest(${unnestArgs.join(', ')}) WITH ORDINALITY AS u(${unnestNames.join(', ')}, ord)
         WHERE ${conditions.join(' AND ')} AND (SELECT state FROM guard) = ANY($3::text[])
         RETURNING t.${this.col(target.id)}::text AS id, u.id = ANY(${relabelIds}::${element}[]) AS relabel
       )${progressSql}
       SELECT (SELECT state FROM guard) AS kek_state,
              CASE WHEN (SELECT count(*) FROM updated) = ${param(cas.count)}::int THEN NULL
                ELSE (SELECT array_agg(x::text) FROM unnest(${ids}::${element}[]) AS x WHERE x::text NOT IN (SELECT id FROM updated)) END AS lost,
              (SELECT count(*) FROM updated) AS written,
              (SELECT count(*) FILTER (WHERE relabel) FROM updated) AS relabelled`,
        params,
      ),
    );

    const result = rows[0]!;
    if (!writable.includes(result.kek_state ?? '')) {
      throw new KekNotWritableError(target.name, to, result.kek_state);
    }
    return { lost: new Set(result.lost ?? []), written: Number(result.written), relabelled: Number(result.relabelled) };
  }

  /**
   * One statement: writes a first wrapped DEK, labelled `kekId`, into each row that has none (its value is NULL; a
   * writer that provisioned one meanwhile wins), only while the registry holds `kekId` active, and counts what it
   * wrote in a migration's progress row. Returns the ids written.
   */
  async provisionMissing(
    client: PoolClient | Pool,
    kekId: string,
    writes: { id: string; values: ColumnValue[] }[],
    progressKey: string,
  ): Promise<Set<string>> {
    const { target } = this;
    const params: unknown[] = [target.name, kekId];
    const param = (value: unknown) => {
      params.push(value);
      return `$${params.length}`;
    };
    const unnestArgs = [`${param(textArray(writes.map((w) => w.id)))}::text[]`];
    const unnestNames = ['id'];
    const sets = [
      `${this.col(target.label.column)} = ${this.labelParam(2)}`,
      ...this.newValueSets(writes, param, unnestArgs, unnestNames),
    ];
    for (const column of Object.keys(target.setOnWrite)) sets.push(`${this.col(column)} = now()`);
    const key = param(progressKey);
    const { rows } = await client.query<{ kek_state: string | null; written: string[] | null }>(
      `WITH guard AS (
         SELECT state FROM rekey.keks WHERE target = $1 AND kek_id = $2 FOR SHARE
       ), updated AS (
         UPDATE ${this.table} AS t SET ${sets.join(', ')}
         FROM unnest(${unnestArgs.join(', ')}) WITH ORDINALITY AS u(${unnestNames.join(', ')}, ord)
         WHERE t.${this.col(target.id)} = ${this.idCast('u.id')} AND t.${this.col(this.valueColumn)} IS NULL
           AND (SELECT state FROM guard) = 'active'
         RETURNING t.${this.col(target.id)}::text AS id
       ), progress AS (
         UPDATE rekey.field_migration_progress SET deks_provisioned = deks_provisioned + (SELECT count(*) FROM updated),
           updated_at = now() WHERE progress_key = ${key}
       )
       SELECT (SELECT state FROM guard) AS kek_state, (SELECT array_agg(id) FROM updated) AS written`,
      params,
    );
    const result = rows[0]!;
    if (result.kek_state !== 'active') throw new KekNotWritableError(target.name, kekId, result.kek_state);
    return new Set(result.written ?? []);
  }

  /** `column = new value` for each of the codec's write columns, their values added as unnested parameters. */
  private newValueSets(
    writes: { values: ColumnValue[] }[],
    param: (value: unknown) => string,
    unnestArgs: string[],
    unnestNames: string[],
  ): string[] {
    return this.codec.writeColumns.map((column, i) => {
      const { expression, arg } = this.columnParam(
        writes.map((w) => w.values[i]!),
        param,
        `new${i}`,
      );
      if (arg) {
        unnestArgs.push(arg);
        unnestNames.push(`new${i}`);
      }
      return `${this.col(column)} = ${expression}`;
    });
  }

  private async recordOnly(client: PoolClient | Pool, progress: ProgressDelta): Promise<void> {
    await client.query(
      `UPDATE rekey.rewrap_progress SET cursor = COALESCE($2::text, cursor), failed = failed + $3::int, updated_at = now()
       WHERE progress_key = $1`,
      [progress.progressKey, progress.cursor, progress.failed],
    );
  }

  /** A column of values (valueParam) as SQL: an unnested text[], or slices of one bytea parameter. */
  private valueExpression(
    values: ValueParam,
    param: (value: unknown) => string,
    name: string,
  ): { expression: string; arg?: string } {
    if (values.kind === 'text') return { expression: `u.${name}`, arg: `${param(values.array)}::text[]` };
    const joined = param(values.joined);
    const { lengths } = values;
    const length = lengths[0] ?? 0;
    let same = true;
    for (let i = 1; i < lengths.length && same; i++) same = lengths[i] === length;
    if (same) {
      return { expression: `substring(${joined}::bytea FROM ((u.ord - 1) * ${length} + 1)::int FOR ${length})` };
    }
    const offsets: number[] = [];
    let offset = 1;
    for (let i = 0; i < lengths.length; i++) {
      offsets.push(offset);
      offset += lengths[i]!;
    }
    const lengthsParam = param(Array.from(lengths));
    const startsParam = param(offsets);
    return {
      expression: `substring(${joined}::bytea FROM (${startsParam}::int[])[u.ord] FOR (${lengthsParam}::int[])[u.ord])`,
    };
  }

  /**
   * A column of values as one parameter. Text goes as a text[] unnested per row. Bytea goes as one binary parameter
   * cut with substring (node-postgres would send a bytea[] as escaped text): by ordinal when every value has one
   * length, else by offsets.
   */
  private columnParam(
    values: ColumnValue[],
    param: (value: unknown) => string,
    name: string,
  ): { expression: string; arg?: string } {
    if (values.length === 0 || typeof values[0] === 'string') {
      return { expression: `u.${name}`, arg: `${param(textArray(values as string[]))}::text[]` };
    }
    const buffers = values as Buffer[];
    const joined = param(Buffer.concat(buffers));
    const length = buffers[0]!.length;
    if (buffers.every((b) => b.length === length)) {
      return { expression: `substring(${joined}::bytea FROM ((u.ord - 1) * ${length} + 1)::int FOR ${length})` };
    }
    const offsets: number[] = [];
    let offset = 1;
    for (const b of buffers) {
      offsets.push(offset);
      offset += b.length;
    }
    const lengths = param(buffers.map((b) => b.length));
    const starts = param(offsets);
    return {
      expression: `substring(${joined}::bytea FROM (${starts}::int[])[u.ord] FOR (${lengths}::int[])[u.ord])`,
    };
  }

  /**
   * Whether the table has a row with this id, with or without a value (`--tenant-id` must name a tenant that exists).
   * An id that is not of the column's type (not a UUID, for a uuid column) is refused with what it should be.
   */
  async hasRow(id: string): Promise<boolean> {
    try {
      const { rows } = await this.db.query(
        `SELECT 1 FROM ${this.table} t WHERE t.${this.col(this.target.id)} = ${this.idCast('$1')} LIMIT 1`,
        [id],
      );
      return rows.length > 0;
    } catch (err) {
      if ((err as { code?: string }).code === '22P02') {
        throw new InvalidRotationError(
          `'${id}' is not an id of ${describeTable(this.target.table)}: its ${this.target.id} column is ${this.type(this.target.id)}`,
        );
      }
      throw err;
    }
  }

  /** Rows labelled `kekId` with a stored value. */
  async countOnLabel(kekId: string, client: PoolClient | Pool = this.db, onlyId?: string): Promise<number> {
    const idFilter = onlyId === undefined ? '' : ` AND t.${this.col(this.target.id)} = ${this.idCast('$2')}`;
    const { rows } = await client.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${this.table} t
       WHERE t.${this.col(this.target.label.column)} = ${this.labelParam(1)} AND t.${this.col(this.valueColumn)} IS NOT NULL${idFilter}`,
      onlyId === undefined ? [kekId] : [kekId, onlyId],
    );
    return Number(rows[0]?.n ?? 0);
  }

  /** Rows with a stored value, per KEK label (Talos's stale_counts), and rows with none. */
  async countsByLabel(): Promise<{ byLabel: Record<string, number>; withoutValue: number }> {
    const { rows } = await this.db.query<{ label: string | null; has_value: boolean; n: string }>(
      `SELECT t.${this.col(this.target.label.column)}::text AS label, t.${this.col(this.valueColumn)} IS NOT NULL AS has_value,
              count(*) AS n
       FROM ${this.table} t GROUP BY 1, 2 ORDER BY 1`,
    );
    const byLabel: Record<string, number> = {};
    let withoutValue = 0;
    for (const row of rows) {
      if (!row.has_value) withoutValue += Number(row.n);
      else byLabel[row.label ?? '(none)'] = (byLabel[row.label ?? '(none)'] ?? 0) + Number(row.n);
    }
    return { byLabel, withoutValue };
  }

  /**
   * The label column's default, when it is a constant (Mycelium's `kek_version INTEGER NOT NULL DEFAULT 1`): the KEK
   * a row gets when its writer names none. Undefined without a default, or for an expression.
   */
  async labelDefault(): Promise<string | undefined> {
    const { rows } = await this.db.query<{ expr: string }>(
      `SELECT pg_get_expr(d.adbin, d.adrelid) AS expr
       FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
       WHERE d.adrelid = to_regclass($1) AND a.attname = $2`,
      [this.table, this.target.label.column],
    );
    const expr = rows[0]?.expr?.trim();
    if (expr === undefined) return undefined;
    const integer = /^\(?'?(-?\d+)'?\)?(?:::[a-z ]+)?$/.exec(expr);
    if (integer) return integer[1];
    const text = /^'((?:[^']|'')*)'::[a-z ]+(?:\(\d+\))?$/.exec(expr);
    return text ? text[1]!.replace(/''/g, "'") : undefined;
  }

  /** Up to `limit` ids of rows still labelled `kekId`, for reports. */
  async idsOnLabel(kekId: string, limit: number): Promise<string[]> {
    const { rows } = await this.db.query<{ id: string }>(
      `SELECT t.${this.col(this.target.id)}::text AS id FROM ${this.table} t
       WHERE t.${this.col(this.target.label.column)} = ${this.labelParam(1)} AND t.${this.col(this.valueColumn)} IS NOT NULL
       ORDER BY t.${this.col(this.target.id)} LIMIT $2`,
      [kekId, limit],
    );
    return rows.map((r) => r.id);
  }

  /** A random sample of rows labelled `kekId` (or, with `onlyId`, that one row). */
  async sampleOnLabel(kekId: string, size: number, onlyId?: string): Promise<TargetRow[]> {
    const idFilter = onlyId === undefined ? '' : ` AND t.${this.col(this.target.id)} = ${this.idCast('$3')}`;
    const { rows } = await this.db.query<TargetRow>(
      `SELECT ${this.selectList()} FROM ${this.table} t
       WHERE t.${this.col(this.target.label.column)} = ${this.labelParam(1)} AND t.${this.col(this.valueColumn)} IS NOT NULL${idFilter}
       ORDER BY random() LIMIT $2`,
      onlyId === undefined ? [kekId, size] : [kekId, size, onlyId],
    );
    return this.complete(rows);
  }

  /** A sample of rows with a stored value, whatever their label: what first contact reads. */
  async sampleAny(size: number): Promise<TargetRow[]> {
    const { rows } = await this.db.query<TargetRow>(
      `SELECT ${this.selectList()} FROM ${this.table} t WHERE t.${this.col(this.valueColumn)} IS NOT NULL LIMIT $1`,
      [size],
    );
    return this.complete(rows);
  }

  /** Ids splitting the rows labelled `kekId` into parts of about equal size. */
  async boundaries(kekId: string, fractions: number[]): Promise<string[]> {
    const { rows } = await this.db.query<{ boundaries: string[] | null }>(
      `SELECT percentile_disc($2::float8[]) WITHIN GROUP (ORDER BY t.${this.col(this.target.id)})::text[] AS boundaries
       FROM ${this.table} t
       WHERE t.${this.col(this.target.label.column)} = ${this.labelParam(1)} AND t.${this.col(this.valueColumn)} IS NOT NULL`,
      [kekId, fractions],
    );
    return rows[0]?.boundaries ?? [];
  }

  /**
   * The mark from which a later scan (Scan.changedSince) reads only the rows written since (64 bits, as text): the
   * oldest transaction id that may still write to this database. Every row version a transaction not ended by now
   * writes (an insert, an update, a relabel, in a subtransaction too) carries an xmin at or after it; a row version
   * with an older xmin was committed before now and is still the one a read made after now sees, if nothing wrote
   * the row since. Read in three statements, in this order (docs/13-retire-proof.md, "The change mark"):
   * 1. the current snapshot's xmax: every transaction id not below it was assigned after this statement's snapshot,
   *    and every id below it that was still running had its PGPROC's xid set before it (under XidGenLock);
   * 2. backend_xid of every session of this database (pg_stat_activity): a session's top-level id, never above the
   *    id of one of its subtransactions; a session that ended between 1 and 2 committed or aborted before the scans;
   * 3. the ids of this database's prepared transactions (read after 2: a transaction that prepares between them is
   *    in 2 or in 3).
   * The least of them, or of (1) alone when none is below it. Transactions of other databases cannot write this
   * database's tables and do not drag the mark back. Where this role cannot see other sessions' backend_xid (neither
   * a superuser nor a member of pg_read_all_stats), the server-wide mark (pg_current_snapshot's xmin), and `note`
   * says so. Reads nothing of the table and adds nothing to it. Where the table's row versions carry no such id (a
   * view, a foreign table, a table access method other than heap), says why instead.
   */
  async changeMark(): Promise<{ mark: string; note?: string } | { why: string }> {
    const { rows } = await this.db.query<{
      relkind: string | null;
      heap: boolean | null;
      next: string;
      oldest: string;
      sees: boolean;
    }>(
      `SELECT c.relkind::text AS relkind,
              CASE WHEN c.relkind = 'p'
                THEN (SELECT coalesce(bool_and(am.amname = 'heap'), true) FROM pg_partition_tree(c.oid) pt
                      JOIN pg_class l ON l.oid = pt.relid LEFT JOIN pg_am am ON am.oid = l.relam WHERE pt.isleaf)
                ELSE (SELECT am.amname = 'heap' FROM pg_am am WHERE am.oid = c.relam) END AS heap,
              pg_snapshot_xmax(pg_current_snapshot())::text AS next,
              pg_snapshot_xmin(pg_current_snapshot())::text AS oldest,
              pg_has_role('pg_read_all_stats', 'USAGE') AS sees
       FROM pg_class c WHERE c.oid = to_regclass($1)`,
      [this.table],
    );
    const row = rows[0];
    if (row === undefined) return { why: `${this.table} is not a table this connection can see` };
    if (row.relkind !== 'r' && row.relkind !== 'p') {
      return { why: `${this.table} is not a table (relkind '${row.relkind}'): its rows carry no transaction id` };
    }
    if (row.heap !== true) {
      return {
        why: `${this.table} is not stored by PostgreSQL's heap: its rows' xmin may not say when they were written`,
      };
    }
    if (!row.sees) {
      return {
        mark: row.oldest,
        note: `role ${JSON.stringify(await this.currentUser())} cannot read other sessions' transaction ids (pg_read_all_stats): the change mark is the oldest transaction running anywhere on the server, and a transaction left open in another database makes the rows proved under the lock more`,
      };
    }
    const sessions = await this.db.query<{ xid: string }>(
      `SELECT backend_xid::text AS xid FROM pg_stat_activity WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND backend_xid IS NOT NULL`,
    );
    const prepared = await this.db.query<{ xid: string }>(
      `SELECT transaction::text AS xid FROM pg_prepared_xacts WHERE database = current_database()`,
    );
    return {
      mark: oldestRunning(
        BigInt(row.next),
        [...sessions.rows, ...prepared.rows].map((r) => r.xid),
      ).toString(),
    };
  }

  /**
   * The relations a scan of the table reads, as text: the table's oid, and each table attached to it by inheritance or
   * as a partition, with the xmin of its pg_inherits row (an attachment made again is another). Rows in a table that
   * joins the scan (ALTER TABLE … INHERIT, ATTACH PARTITION, a table renamed into place) keep the xmin of whatever
   * wrote them, older than any change mark read before: a proof that reads only the rows written since a mark holds
   * only while this is what it was when the mark was read.
   * Prefixed with when the server last started (pg_postmaster_start_time, in microseconds): a file-level restore of
   * the cluster (the server stopped, an older data directory put back, started) keeps the system identifier, the
   * timeline and every oid, while rows go back to older versions whose xmin is older than any mark, and the id counter
   * is behind the mark and soon past it again. No such restore happens without a start, so a start since the mark
   * turns its use off (any restart costs one proof of every row, never a row left out).
   */
  async scanScope(): Promise<string> {
    const { rows } = await this.db.query<{ started: string; relations: string | null }>(
      `WITH RECURSIVE rel(oid, attached) AS (
         SELECT to_regclass($1)::oid, ''::text
         UNION ALL
         SELECT i.inhrelid, i.xmin::text FROM pg_inherits i JOIN rel ON i.inhparent = rel.oid)
       SELECT (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint::text AS started,
              string_agg(oid::text || ':' || attached, ',' ORDER BY oid, attached) AS relations FROM rel`,
      [this.table],
    );
    return `started ${rows[0]!.started};${rows[0]!.relations ?? ''}`;
  }

  /**
   * Where a change mark is read (MarkNow): the cluster (its system identifier), the timeline of its last checkpoint,
   * this database's oid, the server's last start and the relations a scan of the table reads (scanScope), with the
   * next transaction id (64 bits). A mark read elsewhere, or one the id counter is now behind, says nothing of these rows (verifiedFails); nor
   * does one read before a table joined the scan, whose rows keep the xmin of whatever wrote them, unread by the check.
   * Undefined where the server does not say (a role refused pg_control_system).
   */
  async markNow(): Promise<{ scope: string; next: string } | undefined> {
    let row: { system: string; timeline: number; db: string; next: string };
    try {
      const { rows } = await this.db.query<typeof row>(
        `SELECT (SELECT system_identifier::text FROM pg_control_system()) AS system,
                (SELECT timeline_id FROM pg_control_checkpoint()) AS timeline,
                (SELECT oid::text FROM pg_database WHERE datname = current_database()) AS db,
                pg_snapshot_xmax(pg_current_snapshot())::text AS next`,
      );
      row = rows[0]!;
    } catch (err) {
      // 42501: insufficient_privilege. Anything else is the database's trouble, retried with the step.
      if ((err as { code?: string }).code === '42501') return undefined;
      throw err;
    }
    // Read after the id counter: a table attached in between shows here, and the mark is not reused.
    const relations = await this.scanScope();
    return { scope: `${row.system}/${row.timeline}/${row.db}/${relations}`, next: row.next };
  }

  private async currentUser(): Promise<string> {
    const { rows } = await this.db.query<{ name: string }>('SELECT current_user AS name');
    return rows[0]!.name;
  }

  /** The database's clock (ISO 8601): evidence is compared with times the database wrote, never a worker's. */

  async now(): Promise<string> {
    const { rows } = await this.db.query<{ now: Date }>('SELECT now() AS now');
    return rows[0]!.now.toISOString();
  }

  /** Whether the application wrote a row under `kekId` after `since` (evidence that it wraps with it). */
  async writtenSince(kekId: string, timestampColumn: string, since: Date): Promise<boolean> {
    const { rows } = await this.db.query(
      `SELECT 1 FROM ${this.table} t
       WHERE t.${this.col(this.target.label.column)} = ${this.labelParam(1)} AND t.${this.col(timestampColumn)} > $2 LIMIT 1`,
      [kekId, since],
    );
    return rows.length > 0;
  }
}

const text = (c: ColumnInfo) => c.category === TEXT;
const integer = (c: ColumnInfo) => INTEGER_TYPES.includes(c.typname);

/** Every column of a target's own table its definition names, with the types that will do (and the DDL's). */
export function targetNeeds(target: TargetDefinition, codec: Codec): ColumnNeed[] {
  const ddl = (column: string, fallback: string) => ddlType(target.table, column, fallback);
  const needs: ColumnNeed[] = [
    {
      column: target.id,
      role: 'row id',
      ok: (c) => text(c) || c.typname === 'uuid' || integer(c),
      wanted: 'text, uuid or an integer',
      ddl: ddl(target.id, 'text'),
      key: true,
    },
    target.label.kind === 'generation'
      ? {
          column: target.label.column,
          role: 'KEK generation',
          ok: integer,
          wanted: 'an integer',
          ddl: ddl(target.label.column, 'integer NOT NULL DEFAULT 1'),
        }
      : {
          column: target.label.column,
          role: 'KEK id',
          ok: text,
          wanted: 'text',
          ddl: ddl(target.label.column, 'text'),
        },
  ];
  if (target.cas.kind === 'version') {
    const { column } = target.cas;
    needs.push({
      column,
      role: 'version',
      ok: integer,
      wanted: 'an integer',
      ddl: ddl(column, 'integer NOT NULL DEFAULT 1'),
    });
  }
  const { value, aad } = target.format;
  const valueColumns = value.kind === 'combined' ? [value.column] : [value.ciphertext, value.nonce, value.tag];
  for (const column of valueColumns) {
    needs.push(
      value.encoding === 'bytea'
        ? { column, role: 'stored value', ok: (c) => c.typname === 'bytea', wanted: 'bytea', ddl: ddl(column, 'bytea') }
        : {
            column,
            role: 'stored value',
            ok: text,
            wanted: `text (it holds ${value.encoding})`,
            ddl: ddl(column, 'text'),
          },
    );
  }
  for (const column of codec.readColumns.filter((c) => !valueColumns.includes(c))) {
    needs.push({
      column,
      role: 'associated data',
      ok: (c) => text(c) || c.typname === 'uuid',
      wanted: 'text or uuid',
      ddl: ddl(column, 'text'),
    });
  }
  if (aad.store) {
    const bytea = aad.store.encoding === 'bytea';
    needs.push({
      column: aad.store.column,
      role: 'stored associated data',
      ok: (c) => (bytea ? c.typname === 'bytea' : text(c)),
      wanted: bytea ? 'bytea' : 'text',
      ddl: ddl(aad.store.column, bytea ? 'bytea' : 'text'),
    });
  }
  const timestamp = (column: string, role: string): ColumnNeed => ({
    column,
    role,
    ok: (c) => TIME_TYPES.includes(c.typname),
    wanted: 'a timestamp',
    ddl: ddl(column, 'timestamptz'),
  });
  for (const column of Object.keys(target.setOnWrite)) needs.push(timestamp(column, 'set on write'));
  const owner = target.currentKek;
  if (owner.owner === 'application') {
    for (const step of ['promote', 'retire'] as const) {
      const probe = owner[step].probe;
      if (probe?.kind === 'rows-written') {
        needs.push(timestamp(probe.timestampColumn, `the ${step} probe's time of the application's writes`));
      }
    }
  }
  return needs;
}
