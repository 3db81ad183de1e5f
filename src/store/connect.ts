import { Client, Pool, type PoolClient, type PoolConfig } from 'pg';
import { markDatabaseUnreachable } from '../errors';

const ignore = () => undefined;

/**
 * A pooled client checked out for a while. The pool listens for errors on idle clients only; one held across
 * non-database work (crypto between queries) would crash the process if the server dropped it then. Here the
 * error is left to surface on the next query, which fails and is retried like any other.
 */
export async function checkout(pool: Pool): Promise<PoolClient & { release(err?: Error | boolean): void }> {
  const client = await pool.connect();
  client.on('error', ignore);
  const release = client.release.bind(client);
  client.release = (err?: Error | boolean) => {
    client.off('error', ignore);
    release(err);
  };
  return client;
}

/**
 * Runs `work` in one transaction on a checked-out client: committed when it returns, rolled back when it throws (a
 * broken connection rolls back by itself, so a failed ROLLBACK is ignored), the client released either way.
 */
export async function inTransaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await checkout(pool);
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(ignore);
    throw err;
  } finally {
    client.release();
  }
}

/** How long opening a connection may take when the URL does not say (libpq's `connect_timeout`, in seconds). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/**
 * The bound on opening a connection: the URL's `connect_timeout` (seconds, as libpq reads it; 0 waits for ever, and
 * less than 2 is 2, as in libpq), else 10 s. A server that accepts and never answers is then unreachable, not a hang.
 */
export function connectTimeoutMs(connectionString: string): number {
  let value: string | null = null;
  try {
    value = new URL(connectionString).searchParams.get('connect_timeout');
  } catch {
    return DEFAULT_CONNECT_TIMEOUT_MS; // not a URL: the driver says what is wrong with it
  }
  if (value === null || value.trim() === '') return DEFAULT_CONNECT_TIMEOUT_MS;
  const seconds = Number(value);
  if (!Number.isInteger(seconds)) return DEFAULT_CONNECT_TIMEOUT_MS;
  return seconds <= 0 ? 0 : Math.max(seconds, 2) * 1000;
}

/**
 * A connection that could not be opened (refused, reset, timed out, no route) is the database's unreachability:
 * marked so, whatever the socket said (src/errors.ts maps it to 503 and exit 1). PostgreSQL's own refusals carry
 * their SQLSTATE and are judged by it.
 */
class ReportingClient extends Client {
  override connect(): Promise<Client>;
  override connect(callback: ((err: Error) => void) | ((err: null, c: Client) => void)): void;
  override connect(callback?: ((err: Error) => void) | ((err: null, c: Client) => void)): Promise<Client> | void {
    const mark = (err: unknown) =>
      (err as { severity?: unknown }).severity === undefined ? markDatabaseUnreachable(err) : err;
    if (callback) {
      const answer = callback as (err: Error | null, c?: Client) => void;
      super.connect((err: Error | null) => (err ? answer(mark(err) as Error) : answer(null, this)));
      return;
    }
    return super.connect().catch((err: unknown) => Promise.reject(mark(err) as Error));
  }
}

/**
 * A pool of rekey's processes (the admin API, the CLI, a target's own database): opening a connection is bounded
 * (`connectTimeoutMs`), and a connection that cannot be opened says the database is unreachable.
 */
export function openPool(
  connectionString: string,
  options: Omit<PoolConfig, 'connectionString' | 'Client'> = {},
): Pool {
  return new Pool({
    connectionTimeoutMillis: connectTimeoutMs(connectionString),
    ...options,
    connectionString,
    Client: ReportingClient,
  });
}
