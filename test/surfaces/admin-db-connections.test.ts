// The admin API's PostgreSQL connections killed under it (pg_terminate_backend, as a failover or an operator does):
// the process answers every request and keeps running. It once crashed on a rotate-all under load, a pg object in the
// stack: an idle pooled connection that the server ends emits 'error' on its pool, which had no listener.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedTenants } from '../../src/dev/tenants';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { projectRoot } from '../../src/project-paths';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { createDevServerEnv, type OwnServerEnvironment } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** How the admin API's connections are told from the worker's and the test's in pg_stat_activity. */
const APP_NAME = `rekey-admin-${randomBytes(4).toString('hex')}`;
const TOKEN = randomBytes(24).toString('hex');

describe('the admin API when PostgreSQL ends its connections', () => {
  let env: OwnServerEnvironment;
  let db: TestDatabase;
  let keys: FileKeyring;
  let served: ServedWorker;
  let admin: ChildProcess;
  let output = '';
  let base: string;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-admin-db-'));

  /** Ends every connection the admin API holds (idle or busy): how many it ended. */
  async function terminateAdminConnections(): Promise<number> {
    const { rows } = await db.pool.query<{ n: string }>(
      `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE application_name = $1`,
      [APP_NAME],
    );
    return Number(rows[0]!.n);
  }

  const call = (method: string, route: string, body?: unknown) =>
    fetch(`${base}${route}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      ...(body !== undefined && { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(60_000),
    }).catch((err: Error) => {
      // Unanswered: the process's own last words say why.
      throw new Error(
        `${method} ${route}: ${err.message} (${String(err.cause)}); the admin API's output: ${output.slice(-3000)}`,
      );
    });

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    const keyringFile = path.join(scratch, 'keyring.json');
    keys = FileKeyring.open(keyringFile, { create: true });
    await generateKek(keys, 'v1');
    await generateKek(keys, 'v2');
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
    await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 50 });
    const taskQueue = `admin-db-${randomBytes(4).toString('hex')}`;
    served = await serveWorker(env, { taskQueue, db: db.pool, keys, temporal: true });
    admin = spawn(process.execPath, [path.join(projectRoot, 'dist', 'src', 'admin', 'main.js')], {
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: db.url,
        PGAPPNAME: APP_NAME,
        TEMPORAL_ADDRESS: env.address,
        REKEY_TASK_QUEUE: taskQueue,
        REKEY_ADMIN_TOKEN: TOKEN,
        REKEY_ADMIN_PORT: '0',
        REKEY_KEY_PROVIDER: 'file',
        REKEY_KEYRING_FILE: keyringFile,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = (chunk: Buffer) => (output = (output + chunk.toString()).slice(-20_000));
    admin.stdout!.on('data', keep);
    admin.stderr!.on('data', keep);
    base = await eventually(
      'the admin API listening',
      () => /rekey admin API listening on (http:\/\/\S+?)"/.exec(output)?.[1],
      {
        failIf: () => (admin.exitCode !== null ? `it exited ${admin.exitCode}: ${output}` : undefined),
      },
    );
  });

  afterAll(async () => {
    if (admin && admin.exitCode === null) {
      const exited = new Promise((resolve) => admin.once('exit', resolve));
      admin.kill('SIGTERM');
      await exited;
    }
    await served?.stop();
    keys?.close();
    await db?.drop();
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('Finding (admin API crash on rotate-all, a pg object in the stack): with its PostgreSQL connections terminated while it is idle and during rotate-all requests, the admin API answers every request with a status and keeps running, and the rotation starts once the database answers again', async () => {
    // Idle connections in its pool: the server ends them between requests.
    expect((await call('GET', '/admin/v1/secrets/kek-status')).status).toBe(200);
    expect(await terminateAdminConnections()).toBeGreaterThan(0);
    // The next request answers: from a new connection, or, when it was handed the ended one before the pool heard
    // of the end, with the mapped failure (503, the database unreachable); the one after that from a new connection.
    const next = await call('GET', '/admin/v1/secrets/kek-status');
    expect([200, 503]).toContain(next.status);
    await eventually('kek-status answered from a new connection', async () => {
      const answer = await call('GET', '/admin/v1/secrets/kek-status');
      return answer.status === 200;
    });

    // Busy ones: rotate-all requests while every connection the admin API opens is ended as soon as it is seen.
    let killing = true;
    let killed = 0;
    const killer = (async () => {
      while (killing) killed += await terminateAdminConnections();
    })();
    const answers = await Promise.all(
      Array.from({ length: 6 }, () =>
        call('POST', '/admin/v1/secrets/rotate-all', { to: 'v2', grace_period: '1h' }).then(async (response) => ({
          status: response.status,
          body: (await response.json()) as { error?: string },
        })),
      ),
    );
    killing = false;
    await killer;
    expect(killed).toBeGreaterThan(0);
    // Each request got an answer: started, already running, or the mapped failure of a lost connection.
    for (const answer of answers) expect([202, 409, 500, 503], JSON.stringify(answers)).toContain(answer.status);
    expect(admin.exitCode, output).toBeNull();

    // Still running: it answers, and a rotate-all now starts the rotation (or finds the one a request above started).
    expect((await call('GET', '/healthz')).status).toBe(200);
    const again = await call('POST', '/admin/v1/secrets/rotate-all', { to: 'v2', grace_period: '1h' });
    expect([202, 409]).toContain(again.status);
    expect(output).not.toMatch(/Unhandled|uncaught/i);
  });
});
