import type { Pool, PoolClient } from 'pg';

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
