import { Client, Pool } from 'pg';
import { migrate } from '../store/migrate';

export interface ScratchDatabase {
  url: string;
  pool: Pool;
  drop(): Promise<void>;
}

async function asAdmin(adminUrl: string, sql: string): Promise<void> {
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(sql);
  } finally {
    await admin.end();
  }
}

/**
 * A new database `name` beside the one at `adminUrl` (one of that name is replaced), with a pool over it; migrated
 * unless asked not to (a test that builds another system's schema first).
 * The tests, the demo, the benchmark and the chaos suite all start from one of these.
 */
export async function createDatabase(
  adminUrl: string,
  name: string,
  poolSize = 8,
  options: { migrate?: boolean } = {},
): Promise<ScratchDatabase> {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`'${name}' is not a plain database name`);
  await asAdmin(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await asAdmin(adminUrl, `CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const pool = new Pool({ connectionString: url.toString(), max: poolSize });
  pool.on('error', () => undefined); // idle connections die when the database is dropped or the server restarts
  if (options.migrate !== false) {
    const client = await pool.connect();
    try {
      await migrate(client);
    } finally {
      client.release();
    }
  }
  return {
    url: url.toString(),
    pool,
    async drop() {
      await pool.end();
      await asAdmin(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}
