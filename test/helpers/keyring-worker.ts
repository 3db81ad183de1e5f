// The fixture of the tests that drive rekey's own table through its surfaces (the built CLI, the admin API): a fresh
// database whose registry has v1 active and `tenants` DEKs under it, a keyring file holding `kekIds`, and a worker
// serving it on the test's Temporal server; the CLI runs as an operator runs it against them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import type { FastifyInstance } from 'fastify';
import type { Pool } from 'pg';
import { buildAdminServer } from '../../src/admin/server';
import { seedTenants } from '../../src/dev/tenants';
import { FileKeyring } from '../../src/keyring/drivers/file';
import type { StoreDriver } from '../../src/keyring/driver';
import type { RekeyMetrics } from '../../src/observability/metrics';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import { runRekeyAt, type CliResult } from './cli';
import { createTestDatabase, type TestDatabase } from './database';
import { workflowBundle } from './temporal';
import { fingerprintIn } from './store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** A worker running on the test's Temporal server, and the admin APIs a test opens beside it. */
export interface ServedWorker {
  worker: Worker;
  /**
   * An admin API on the worker's task queue with `token`, over the worker's targets (or, when it was given none, over
   * targets of its own on the same database and keys); it names no configured current KEK unless told. Closed by `stop`.
   */
  adminApi(
    token: string,
    options?: {
      defaultTarget?: string;
      configuredCurrentKekId?: (target: string) => string | undefined;
      webUiUrl?: (workflowId: string) => string;
    },
  ): Promise<FastifyInstance>;
  /** Closes the admin APIs, stops the worker, waits for its run to end and closes the targets it was given. */
  stop(): Promise<void>;
}

/**
 * A worker of `taskQueue` over `db` and `keys` (and `targets`, when given) on `env`'s server, running; with `temporal`,
 * its activities get the test's client (those that read schedules).
 */
export async function serveWorker(
  env: TestWorkflowEnvironment,
  options: {
    taskQueue: string;
    db: Pool;
    keys: StoreDriver;
    targets?: TargetRuntimes;
    temporal?: boolean;
    metrics?: RekeyMetrics;
  },
): Promise<ServedWorker> {
  const { taskQueue, db, keys, targets } = options;
  const worker = await createWorker({
    connection: env.nativeConnection,
    taskQueue,
    db,
    keys,
    ...(options.metrics && { metrics: options.metrics }),
    ...(targets && { targets }),
    ...(options.temporal && { temporal: env.client }),
    workflowBundle: workflowBundle(),
  });
  const running = worker.run();
  const apis: FastifyInstance[] = [];
  return {
    worker,
    adminApi: async (token, api = {}) => {
      const server = await buildAdminServer({
        client: env.client,
        targets: targets ?? new TargetRuntimes({ db, keys }),
        defaultTarget: api.defaultTarget ?? BUILTIN_TARGET,
        taskQueue,
        token,
        configuredCurrentKekId: api.configuredCurrentKekId ?? (() => undefined),
        ...(api.webUiUrl && { webUiUrl: api.webUiUrl }),
      });
      apis.push(server);
      return server;
    },
    stop: async () => {
      for (const api of apis) await api.close();
      worker.shutdown();
      await running;
      await targets?.close();
    },
  };
}

export interface KeyringWorker {
  db: TestDatabase;
  keyring: FileKeyring;
  keyringFile: string;
  /** A scratch directory (the keyring file is in it), removed by `stop`. */
  scratch: string;
  targets: TargetRuntimes;
  /** The built CLI against this database, keyring file, server and task queue; never throws. */
  rekey(...args: string[]): Promise<CliResult>;
  /** The admin API over the same targets (closed by `stop`). */
  adminApi(token: string): Promise<FastifyInstance>;
  /** Closes the admin APIs, stops the worker, closes the keyring and drops the database. */
  stop(): Promise<void>;
}

export async function startKeyringWorker(
  env: TestWorkflowEnvironment & { address: string },
  options: {
    taskQueue: string;
    kekIds: string[];
    tenants: number;
    /** Watches the targets' rotations (and, with `metricsInWorker`, counts what the worker's activities do). */
    metrics?: RekeyMetrics;
    metricsInWorker?: boolean;
    scratchPrefix?: string;
  },
): Promise<KeyringWorker> {
  const { taskQueue } = options;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), options.scratchPrefix ?? 'rekey-surfaces-'));
  const db = await createTestDatabase();
  const keyringFile = path.join(scratch, 'keyring.json');
  const keyring = FileKeyring.open(keyringFile, { create: true });
  for (const id of options.kekIds) await generateKek(keyring, id);
  await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keyring, 'v1'));
  await seedTenants({ db: db.pool, keys: keyring, kekId: 'v1', count: options.tenants });
  const targets = new TargetRuntimes({ db: db.pool, keys: keyring });
  options.metrics?.watch(targets, env.client);
  const served = await serveWorker(env, {
    taskQueue,
    db: db.pool,
    keys: keyring,
    ...(options.metrics && options.metricsInWorker && { metrics: options.metrics }),
    targets,
    temporal: true,
  });
  return {
    db,
    keyring,
    keyringFile,
    scratch,
    targets,
    rekey: (...args) =>
      runRekeyAt(env.address, taskQueue, args, {
        DATABASE_URL: db.url,
        REKEY_KEYRING_FILE: keyringFile,
      }),
    adminApi: (token) => served.adminApi(token),
    stop: async () => {
      await served.stop();
      keyring.close();
      await db.drop();
      fs.rmSync(scratch, { recursive: true, force: true });
    },
  };
}
