// First contact with a table rekey did not create: every table and column a target's definition names (its own
// table, its probe's column, its encrypted fields' tables) is checked, and every problem is reported at once, with
// the DDL the definition expects, before anything is written. An operator fixes the schema once, not one column per
// attempt.
import type { Pool } from 'pg';
import { EXPECTED_COLUMNS } from '../targets/presets';
import { describeTable, type EncryptedField, type TableRef } from '../targets/target';
import { quoteIdent } from './migrate';
import { TargetSchemaError } from '../errors';

export interface ColumnInfo {
  type: string;
  typname: string;
  category: string;
}

/** One column a definition needs, what it is for, the types that will do, and the type the DDL gives it. */
export interface ColumnNeed {
  column: string;
  /** What it is for, in messages: `KEK generation`, `field totp_secret`. */
  role: string;
  ok: (info: ColumnInfo) => boolean;
  /** The types that will do, in words: `an integer`. */
  wanted: string;
  /** Its type in the DDL rekey prints: `integer NOT NULL DEFAULT 1`. */
  ddl: string;
  /** The table's row id: a new table's primary key. */
  key?: boolean;
}

/** What a table is for, in messages: `field totp_secret`; empty for the target's own table. */
interface TableNeeds {
  table: TableRef;
  purpose: string;
  needs: ColumnNeed[];
}

/** Columns of one table by name, as PostgreSQL describes them; undefined when the table does not exist. */
export async function tableColumns(db: Pool, table: TableRef): Promise<Map<string, ColumnInfo> | undefined> {
  const { rows } = await db.query<{ name: string; type: string; typname: string; category: string }>(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, t.typname, t.typcategory AS category
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`,
    [`${quoteIdent(table.schema)}.${quoteIdent(table.name)}`],
  );
  if (rows.length === 0) return undefined;
  return new Map(rows.map((r) => [r.name, { type: r.type, typname: r.typname, category: r.category }]));
}

/** The type the DDL gives a column: what a preset's application declares (EXPECTED_COLUMNS), else `fallback`. */
export function ddlType(table: TableRef, column: string, fallback: string): string {
  return EXPECTED_COLUMNS[`${describeTable(table)}.${column}`] ?? fallback;
}

/** PostgreSQL's reserved words a table or column might be named (Mycelium's `user`): quoted in the DDL. */
const RESERVED = new Set(
  'all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create current_catalog current_date current_role current_time current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign from grant group having in initially intersect into lateral leading limit localtime localtimestamp not null offset on only or order placing primary references returning select session_user some symmetric table then to trailing true union unique user using variadic when where window with'.split(
    ' ',
  ),
);

/** A name as an operator would type it in DDL: quoted only where it must be. */
function sqlName(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) && !RESERVED.has(name) ? name : quoteIdent(name);
}

function qualified(table: TableRef): string {
  return `${sqlName(table.schema)}.${sqlName(table.name)}`;
}

/**
 * Collects the problems of several tables, then reports them together: each missing table and column, each column of
 * a type that will not do, and the DDL that adds what is missing.
 */
export class SchemaCheck {
  private readonly problems: string[] = [];
  private readonly ddl: string[] = [];
  private readonly tables: TableNeeds[] = [];

  /** Adds a table's needs (the same table may come back for another purpose: its needs are merged). */
  need(table: TableRef, purpose: string, needs: ColumnNeed[]): this {
    this.tables.push({ table, purpose, needs });
    return this;
  }

  /**
   * Checks every table added; returns the columns of each that exists, by `schema.table`. `missingTable` words the
   * problem of a table that does not exist, given what needs it ('' for the target's own table, which names its
   * database).
   */
  async run(
    db: Pool,
    missingTable: (table: TableRef, purposes: string[]) => string = (table, purposes) =>
      `${describeTable(table)} does not exist (${purposes.join(', ')})`,
  ): Promise<Map<string, Map<string, ColumnInfo>>> {
    const found = new Map<string, Map<string, ColumnInfo>>();
    const byTable = new Map<string, TableNeeds[]>();
    for (const entry of this.tables) {
      const key = describeTable(entry.table);
      byTable.set(key, [...(byTable.get(key) ?? []), entry]);
    }
    for (const [where, entries] of byTable) {
      const { table } = entries[0]!;
      const columns = await tableColumns(db, table);
      const needs = byColumn(entries);
      if (!columns) {
        this.problems.push(missingTable(table, [...new Set(entries.map((e) => e.purpose))]));
        const keyed = needs.find((n) => n.key);
        const list = needs.map((n) => `${sqlName(n.column)} ${n.ddl}${n === keyed ? ' PRIMARY KEY' : ''}`);
        this.ddl.push(`CREATE TABLE ${qualified(table)} (${list.join(', ')});`);
        continue;
      }
      found.set(where, columns);
      for (const need of needs) {
        const info = columns.get(need.column);
        if (!info) {
          this.problems.push(`${where} has no column ${need.column} (${need.role})`);
          this.ddl.push(`ALTER TABLE ${qualified(table)} ADD COLUMN ${sqlName(need.column)} ${need.ddl};`);
        } else if (!need.ok(info)) {
          this.problems.push(`${where}.${need.column} (${need.role}) is ${info.type}; it must be ${need.wanted}`);
        }
      }
    }
    return found;
  }

  get passed(): boolean {
    return this.problems.length === 0;
  }

  /** Every problem, and the DDL for what is missing, in one error. */
  error(target: string): TargetSchemaError {
    const ddl = this.ddl.length > 0 ? `. The DDL it expects for what is missing: ${this.ddl.join(' ')}` : '';
    return new TargetSchemaError(`target '${target}': ${this.problems.join('; ')}${ddl}`);
  }
}

/** One need per column, its role followed by every purpose that needs it: `(row id, field totp_secret)`. */
function byColumn(entries: TableNeeds[]): ColumnNeed[] {
  const columns = new Map<string, { need: ColumnNeed; roles: string[]; purposes: string[] }>();
  for (const entry of entries) {
    for (const need of entry.needs) {
      const seen = columns.get(need.column);
      if (!seen) {
        columns.set(need.column, { need, roles: [need.role], purposes: entry.purpose ? [entry.purpose] : [] });
        continue;
      }
      // Two uses of one column: it must do for both.
      const first = seen.need;
      seen.need = { ...first, ok: (info) => first.ok(info) && need.ok(info), key: first.key || need.key };
      if (!seen.roles.includes(need.role)) seen.roles.push(need.role);
      if (entry.purpose && !seen.purposes.includes(entry.purpose)) seen.purposes.push(entry.purpose);
    }
  }
  return [...columns.values()].map(({ need, roles, purposes }) => ({
    ...need,
    role: [...roles, ...purposes].join(', '),
  }));
}

const TEXT = 'S';
const ID_TYPES = ['uuid', 'int2', 'int4', 'int8'];

/** The columns an encrypted field's table must hold: its row id, the field (jsonb with a path, else text), its tenant. */
export function fieldNeeds(field: EncryptedField): ColumnNeed[] {
  const ddl = (column: string, fallback: string) => ddlType(field.table, column, fallback);
  const needs: ColumnNeed[] = [
    {
      column: field.id,
      role: 'row id',
      ok: (c) => c.category === TEXT || ID_TYPES.includes(c.typname),
      wanted: 'text, uuid or an integer',
      ddl: ddl(field.id, 'text'),
      key: true,
    },
    field.path
      ? {
          column: field.column,
          role: 'encrypted value',
          ok: (c) => c.typname === 'jsonb',
          wanted: 'jsonb (the field has a path)',
          ddl: ddl(field.column, 'jsonb'),
        }
      : {
          column: field.column,
          role: 'encrypted value',
          ok: (c) => c.category === TEXT,
          wanted: 'text',
          ddl: ddl(field.column, 'text'),
        },
  ];
  if ('column' in field.tenant) {
    needs.push({
      column: field.tenant.column,
      role: 'tenant',
      ok: (c) => c.category === TEXT || c.typname === 'uuid',
      wanted: 'text or uuid',
      ddl: ddl(field.tenant.column, 'text'),
    });
  }
  return needs;
}
