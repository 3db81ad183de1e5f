// The admin API when its database is unreachable: PostgreSQL refusing its login (the role set NOLOGIN, its sessions
// ended with pg_terminate_backend), and a database that accepts connections and never answers (a TCP server this test
// holds open on port 0). Each answers 503 at once, saying the database is unreachable and when to ask again, and the
// API answers 200 again once the database is back. It answered 500 "internal error" for the first and hung for the
// second. The API's pools are made as its process makes them (openPool), over PostgreSQL and the dev server.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import type { Pool } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { openPool } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually, within } from '../helpers/eventually';
import { createTestKeys } from '../helpers/keys';
import { createDevServerEnv, type OwnServerEnvironment } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

const TOKEN = randomBytes(24).toString('hex');
/** "At once": well inside a request's patience, on a loaded machine (the silent case includes a 2 s connect bound). */
const AT_ONCE_MS = 20_000;

/**
 * A TCP server on port 0 in front of PostgreSQL: `hold` accepts connections and never answers (nor forwards), `forward`
 * pipes them to PostgreSQL. Switching ends every connection it holds.
 */
async function silentFront(
  upstream: URL,
): Promise<{ port: number; mode(m: 'hold' | 'forward'): void; close(): Promise<void> }> {
  let mode: 'hold' | 'forward' = 'hold';
  const sockets = new Set<net.Socket>();
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
  };
  const server = net.createServer((socket) => {
    track(socket);
    if (mode === 'hold') return;
    const back = net.connect(Number(upstream.port || 5432), upstream.hostname);
    track(back);
    socket.pipe(back).pipe(socket);
    socket.on('close', () => back.destroy());
    back.on('close', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    mode(m) {
      mode = m;
      for (const socket of sockets) socket.destroy();
    },
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe('the admin API when its database is unreachable', () => {
  let env: OwnServerEnvironment;
  let db: TestDatabase;
  const { provider: keys } = createTestKeys(['v1', 'v2'], 'v1');
  const role = `rekey_admin_${randomBytes(4).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  const opened: { pool: Pool; api: FastifyInstance; targets: TargetRuntimes }[] = [];

  /** The admin API over a pool made as its process makes one, from `url`. */
  async function adminApi(url: string): Promise<FastifyInstance> {
    const pool = openPool(url, { max: 4 });
    pool.on('error', () => undefined);
    const targets = new TargetRuntimes({ db: pool, keys });
    const api = await buildAdminServer({
      client: env.client,
      targets,
      defaultTarget: BUILTIN_TARGET,
      taskQueue: 'rekey-unreachable-test',
      token: TOKEN,
      configuredCurrentKekId: () => undefined,
    });
    opened.push({ pool, api, targets });
    return api;
  }

  const kekStatus = (api: FastifyInstance, what: string): Promise<LightMyRequestResponse> =>
    within(
      api.inject({ method: 'GET', url: '/admin/v1/secrets/kek-status', headers: { authorization: `Bearer ${TOKEN}` } }),
      AT_ONCE_MS,
      () => `GET /admin/v1/secrets/kek-status (${what}) did not answer within ${AT_ONCE_MS} ms`,
    );

  const expectUnreachable = (response: LightMyRequestResponse, says: RegExp) => {
    expect({ status: response.statusCode, body: response.body }).toMatchObject({ status: 503 });
    expect(response.headers['retry-after']).toBe('5');
    const body = response.json<{ error: string; message: string }>();
    expect(body.error).toBe('database_unreachable');
    expect(body.message).toMatch(/^the database is unreachable \(.+\): retry once it answers$/);
    expect(body.message).toMatch(says);
  };

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    const database = new URL(db.url).pathname.slice(1);
    await db.pool.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
    for (const grant of [
      `GRANT ALL ON DATABASE ${database} TO ${role}`,
      `GRANT ALL ON SCHEMA rekey, public TO ${role}`,
      `GRANT ALL ON ALL TABLES IN SCHEMA rekey, public TO ${role}`,
      `GRANT ALL ON ALL SEQUENCES IN SCHEMA rekey, public TO ${role}`,
    ]) {
      await db.pool.query(grant);
    }
  });

  afterAll(async () => {
    for (const { api, pool, targets } of opened) {
      await api.close();
      await targets.close();
      await pool.end().catch(() => undefined);
    }
    if (db) {
      // The role is the cluster's: its grants in this database go first, then the role, then the database.
      await db.pool.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role]);
      await db.pool.query(`DROP OWNED BY ${role}`);
      await db.pool.query(`DROP ROLE ${role}`);
    }
    await db?.drop();
    await env?.teardown();
  });

  it('PostgreSQL refusing the API’s login (its role set NOLOGIN, its sessions ended): 503 at once with Retry-After, saying the database is unreachable (it answered 500 "internal error"), and 200 again once the login is allowed', async () => {
    const url = new URL(db.url);
    url.username = role;
    url.password = password;
    const api = await adminApi(url.toString());
    expect((await kekStatus(api, 'before')).statusCode).toBe(200);

    await db.pool.query(`ALTER ROLE ${role} NOLOGIN`);
    const { rows } = await db.pool.query<{ ended: boolean }>(
      'SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE usename = $1',
      [role],
    );
    expect(rows.length).toBeGreaterThan(0);
    // The first request may meet a pooled session the server ended (57P01), the next one the refused login (28000):
    // both are the database's unreachability.
    expectUnreachable(await kekStatus(api, 'sessions ended'), /terminat|not permitted to log in/);
    expectUnreachable(await kekStatus(api, 'login refused'), /role "\w+" is not permitted to log in/);

    await db.pool.query(`ALTER ROLE ${role} LOGIN`);
    const back = await kekStatus(api, 'login allowed again');
    expect({ status: back.statusCode, body: back.body }).toMatchObject({ status: 200 });
  });

  it('a database that accepts connections and never answers: 503 once the connect timeout (connect_timeout=2) has passed, not a hang, and 200 once it answers', async () => {
    const front = await silentFront(new URL(db.url));
    try {
      const url = new URL(db.url);
      url.hostname = '127.0.0.1';
      url.port = String(front.port);
      url.searchParams.set('connect_timeout', '2');
      const api = await adminApi(url.toString());

      expectUnreachable(await kekStatus(api, 'the database silent'), /timeout/);

      front.mode('forward');
      const back = await eventually(
        'the admin API answering 200 once the database answers',
        async () => {
          const answer = await kekStatus(api, 'the database answering');
          return answer.statusCode === 200 ? answer : undefined;
        },
        { within: 60_000 },
      );
      expect(back.statusCode).toBe(200);
    } finally {
      await front.close();
    }
  });
});
