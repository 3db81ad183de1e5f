// What docs/02's migration lines run against, for the tests that type them (migration-cli-controls,
// migration-temporal-cli): a dev server, a Mycelium database (its schema, rekey's migrations, the system tenant), and
// a rekey worker on the task queue the page names (`rekey`) with Mycelium's token secret; and a v1 value the
// migration must write, held by an open transaction (an application's, say), so that a run cannot end before the
// lines reach it, however fast it is.
import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import type { PoolClient } from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import { createTestDatabase, migrateDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { createMyceliumSchema, insertLegacyTotpUser, kekOf, SYSTEM_TENANT } from '../helpers/mycelium';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';

export interface MyceliumMigrationWorker {
  readonly env: TestWorkflowEnvironment;
  readonly db: TestDatabase;
  /** Writes a v1 value and holds its row in an open transaction until `releaseValue`. */
  holdValue(): Promise<void>;
  /** Ends the transaction that holds the value's row (rolled back: the value stays as written). */
  releaseValue(): Promise<void>;
}

/** Starts the server, database and worker before the file's tests and stops them after; see the file's header. */
export function useMyceliumMigrationWorker(): MyceliumMigrationWorker {
  let env: TestWorkflowEnvironment | undefined;
  let db: TestDatabase | undefined;
  let worker: Worker | undefined;
  let running: Promise<void> | undefined;
  let targets: TargetRuntimes | undefined;
  let lock: PoolClient | undefined;
  const tokenSecret = randomUUID();

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase({ migrate: false });
    await createMyceliumSchema(db.pool);
    await migrateDatabase(db.pool);
    await db.pool.query(`INSERT INTO public.tenant (id, name) VALUES ($1, 'system')`, [SYSTEM_TENANT]);
    const keys = testKeys(['v1']);
    targets = new TargetRuntimes({ db: db.pool, keys, env: { MYC_TOKEN_SECRET: tokenSecret } });
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue: 'rekey',
      db: db.pool,
      keys,
      targets,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
  });

  const releaseValue = async () => {
    const held = lock;
    lock = undefined;
    await held?.query('ROLLBACK').catch(() => undefined);
    held?.release();
  };

  afterAll(async () => {
    await releaseValue();
    worker?.shutdown();
    await running;
    await targets?.close();
    await db?.drop();
    await env?.teardown();
  });

  return {
    get env() {
      if (!env) throw new Error('the dev server is only available inside tests');
      return env;
    },
    get db() {
      if (!db) throw new Error('the database is only available inside tests');
      return db;
    },
    async holdValue() {
      const pool = this.db.pool;
      const value = await insertLegacyTotpUser(pool, kekOf(tokenSecret), 'ops@example.com', 'JBSWY3DPEHPK3PXP');
      lock = await pool.connect();
      await lock.query('BEGIN');
      await lock.query(`SELECT 1 FROM public."user" WHERE id = $1 FOR UPDATE`, [value.row]);
    },
    releaseValue,
  };
}
