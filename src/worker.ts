import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { Pool } from 'pg';
import { z } from 'zod';
import { createActivities } from './activities';
import { aesGcmBackend } from './crypto/aes-gcm';
import { createRowCrypto, cryptoThreadsFromEnv, type RowCrypto } from './crypto/row-crypto';
import { ensureSearchAttributes } from './client/search-attributes';
import { loadConfig, parseEnv } from './config';
import { openKeyProvider, type KeyProvider } from './keys';
import { createLogger, temporalLogger } from './observability/logger';
import { RekeyMetrics, serveMetrics } from './observability/metrics';
import { migrate } from './store/migrate';
import { loadTargetsConfig } from './targets/config';
import { TargetRuntimes } from './targets/runtime';
import { WorkerPresence } from './targets/worker-presence';
import { temporalConnectionOptions } from './temporal-connection';

export const workflowsPath = path.join(__dirname, 'workflows');

export interface RekeyWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  taskQueue: string;
  db: Pool;
  keys: KeyProvider;
  metrics?: RekeyMetrics;
  /** The targets it serves (REKEY_CONFIG); the presets alone when not given. */
  targets?: TargetRuntimes;
  /** For the activities that read schedules (rotation notices). */
  temporal?: Client;
  /** Where rewrap crypto runs; the process's shared pool (REKEY_CRYPTO_THREADS) when not given. */
  crypto?: RowCrypto;
  /** Activity executions at once (the SDK's default when not given). */
  maxConcurrentActivityTaskExecutions?: number;
  /** The worker's identity in the history (the SDK's pid@host when not given). */
  identity?: string;
  /** A pre-built bundle (tests build it once); otherwise the workflows are bundled from source. */
  workflowBundle?: WorkerOptions['workflowBundle'];
}

export async function createWorker(options: RekeyWorkerOptions): Promise<Worker> {
  const { connection, namespace, taskQueue, db, keys, metrics, targets, workflowBundle, temporal, crypto } = options;
  return Worker.create({
    connection,
    namespace,
    taskQueue,
    ...(options.identity !== undefined && { identity: options.identity }),
    ...(options.maxConcurrentActivityTaskExecutions !== undefined && {
      maxConcurrentActivityTaskExecutions: options.maxConcurrentActivityTaskExecutions,
    }),
    activities: createActivities({
      db,
      keys,
      metrics,
      targets,
      ...(temporal && { temporal }),
      ...(crypto && { crypto }),
    }),
    ...(workflowBundle ? { workflowBundle } : { workflowsPath }),
  });
}

const WorkerEnv = z.object({
  /** 0 picks a free port. */
  REKEY_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9464),
  /** Where the Temporal SDK's own Prometheus endpoint listens (proxied by the one above); 0 turns it off. */
  REKEY_TEMPORAL_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9465),
  /** Activities this process runs at once (each rewrap part holds two database connections); the SDK's default. */
  REKEY_MAX_CONCURRENT_ACTIVITIES: z.coerce.number().int().min(1).max(1000).optional(),
});

/** The worker process: config from the environment, JSON logs, Prometheus metrics, migrations, then poll. */
async function run(): Promise<void> {
  const config = loadConfig();
  const ports = parseEnv(WorkerEnv);
  const logger = createLogger();
  const temporalMetricsPort = ports.REKEY_TEMPORAL_METRICS_PORT;
  Runtime.install({
    logger: temporalLogger(logger),
    ...(temporalMetricsPort > 0 && {
      telemetryOptions: { metrics: { prometheus: { bindAddress: `127.0.0.1:${temporalMetricsPort}` } } },
    }),
  });
  const targetsConfig = loadTargetsConfig();
  const crypto = createRowCrypto(cryptoThreadsFromEnv());
  const metrics = new RekeyMetrics();
  const keys = openKeyProvider(
    { provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE },
    process.env,
    (detected) => logger.info(detected, `key provider detected: ${detected.provider} (${detected.why})`),
    (operation, outcome) => metrics.keyStoreRequests.inc({ operation, outcome }),
  );
  // A remote store is read now: wrong credentials or a missing permission stop the worker here, with the reason.
  await keys.reload();
  const db = new Pool({ connectionString: config.DATABASE_URL });
  // An idle connection dropped by the server (restart, failover) is replaced on next use, not fatal.
  db.on('error', (err) => logger.warn({ err: err.message }, 'idle PostgreSQL connection lost'));
  const migrationClient = await db.connect();
  await migrate(migrationClient).finally(() => migrationClient.release());

  const clientConnection = await Connection.connect(temporalConnectionOptions(config.TEMPORAL_ADDRESS));
  await ensureSearchAttributes(clientConnection, config.TEMPORAL_NAMESPACE);
  const targets = new TargetRuntimes({ db, keys, config: targetsConfig });
  const temporal = new Client({ connection: clientConnection, namespace: config.TEMPORAL_NAMESPACE });
  metrics.watch(targets, temporal);
  const metricsServer = await serveMetrics(metrics, {
    port: ports.REKEY_METRICS_PORT,
    temporalMetricsUrl: temporalMetricsPort > 0 ? `http://127.0.0.1:${temporalMetricsPort}/metrics` : undefined,
  });

  const connection = await NativeConnection.connect(temporalConnectionOptions(config.TEMPORAL_ADDRESS));
  const presence = new WorkerPresence(targets, (message) => logger.warn(message));
  try {
    await presence.start();
    const worker = await createWorker({
      connection,
      namespace: config.TEMPORAL_NAMESPACE,
      taskQueue: config.REKEY_TASK_QUEUE,
      db,
      keys,
      metrics,
      targets,
      temporal,
      crypto,
      maxConcurrentActivityTaskExecutions: ports.REKEY_MAX_CONCURRENT_ACTIVITIES,
    });
    logger.info(
      {
        taskQueue: config.REKEY_TASK_QUEUE,
        cryptoThreads: crypto.threads,
        aesGcm: `${aesGcmBackend().name}: ${aesGcmBackend().detail}`,
        targets: targets.names,
        defaultTarget: targetsConfig.defaultTarget,
        keyProvider: keys.description,
        keys: keys.kekIds().map((id) => ({ id, fingerprint: keys.fingerprint(id) })),
      },
      'rekey worker started',
    );
    await worker.run();
  } finally {
    await presence.stop();
    metricsServer.close();
    await targets.close();
    await connection.close();
    await clientConnection.close();
    await db.end();
    await crypto.close();
    keys.close();
  }
}

if (require.main === module) {
  run().catch((err: unknown) => {
    process.stderr.write(`rekey worker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
