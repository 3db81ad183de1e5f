import type { Pool, PoolClient } from 'pg';
import { TargetConfigError } from '../errors';

/**
 * The database's identity (`rekey.database_identity`, made once by a migration): the first half of every keyspace in
 * it. A database rekey has not migrated yet has none: a worker migrates it when it first opens it.
 */
export async function readDatabaseIdentity(db: Pool | PoolClient, where: string): Promise<string> {
  let rows: { id: string }[];
  try {
    ({ rows } = await db.query<{ id: string }>('SELECT id::text AS id FROM rekey.database_identity'));
  } catch (err) {
    // 42P01: undefined_table (and 3F000: no schema rekey at all): rekey's migrations have not reached this database.
    const code = (err as { code?: string }).code;
    if (code !== '42P01' && code !== '3F000') throw err;
    rows = [];
  }
  const id = rows[0]?.id;
  if (id === undefined) {
    throw new TargetConfigError(
      `${where} has no rekey identity yet (rekey.database_identity): start a rekey worker on it once (it migrates the database), then try again`,
    );
  }
  return id;
}
