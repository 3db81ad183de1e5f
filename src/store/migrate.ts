import { runner } from 'node-pg-migrate';
import type { ClientBase } from 'pg';
import { migrationsDir } from '../project-paths';

/** Every table rekey creates lives in this schema: nothing is added to an application's own schema. */
export const BOOKKEEPING_SCHEMA = 'rekey';

/** Tables of installations made before the bookkeeping schema existed, in the schema where they were made. */
const LEGACY_TABLES = ['rekey_migrations', 'keks', 'tenant_deks', 'tenant_records', 'app_instances', 'rewrap_progress'];
// Any constant will do; it only has to differ from node-pg-migrate's own lock.
const BOOTSTRAP_LOCK = 0x72656b65;

/**
 * Applies every pending migration; safe to call concurrently (an advisory lock serializes callers). An installation
 * made before rekey had a schema of its own has its tables moved into it first, data and indexes included.
 */
export async function migrate(dbClient: ClientBase): Promise<void> {
  await dbClient.query('SELECT pg_advisory_lock($1)', [BOOTSTRAP_LOCK]);
  try {
    await dbClient.query(`CREATE SCHEMA IF NOT EXISTS ${BOOKKEEPING_SCHEMA}`);
    await moveLegacyTables(dbClient);
  } finally {
    await dbClient.query('SELECT pg_advisory_unlock($1)', [BOOTSTRAP_LOCK]);
  }
  try {
    await runner({
      dbClient,
      dir: migrationsDir,
      direction: 'up',
      schema: BOOKKEEPING_SCHEMA,
      migrationsSchema: BOOKKEEPING_SCHEMA,
      migrationsTable: 'rekey_migrations',
      checkOrder: true,
      advisoryLockMode: 'wait',
      log: () => undefined,
    });
  } finally {
    // The runner sets the search path on the session; a pooled client must go back as it came.
    await dbClient.query('RESET search_path');
  }
}

async function moveLegacyTables(client: ClientBase): Promise<void> {
  const { rows } = await client.query<{ schema: string }>(
    `SELECT n.nspname AS schema FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = 'rekey_migrations' AND c.relkind = 'r' AND n.nspname <> $1`,
    [BOOKKEEPING_SCHEMA],
  );
  const legacy = rows[0]?.schema;
  if (legacy === undefined) return;
  const already = await client.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [
    `${BOOKKEEPING_SCHEMA}.rekey_migrations`,
  ]);
  if (already.rows[0]?.t !== null) return;
  await client.query('BEGIN');
  try {
    for (const table of LEGACY_TABLES) {
      await client.query(`ALTER TABLE IF EXISTS ${quoteIdent(legacy)}.${table} SET SCHEMA ${BOOKKEEPING_SCHEMA}`);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
