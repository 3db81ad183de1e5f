import type http from 'node:http';
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
import { openStoreDriver, openTargetDriver } from './keyring/open';
import type { StoreDriver } from './keyring/driver';
import { processHelp } from './env-vars';
import { KeyMaterialError } from './errors';
import { createLogger, temporalLogger } from './observability/logger';
import { RekeyMetrics, serveMetrics } from './observability/metrics';
import { migrate } from './store/migrate';
import { loadTargetsConfig, type TargetsConfig } from './targets/config';
import { servedTargets, type ServedTargets } from './targets/served';
import { TargetRuntimes } from './targets/runtime';
import { WorkerPresence } from './targets/worker-presence';
import { temporalConnectionOptions } from './temporal-connection';

export const workflowsPath = path.join(__dirname, 'workflows');

export interface RekeyWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  taskQueue: string;
  db: Pool;
  /** The process's own key provider (targets whose keys are 'default'); a function opens it when first needed. */
  keys: StoreDriver | (() => StoreDriver);
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
  /** 0: any free port; the 'rekey worker started' line gives the address (metricsUrl). */
  REKEY_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9464),
  /** The interface /metrics listens on: loopback, as the admin API; 0.0.0.0 in a container Prometheus scrapes. */
  REKEY_METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  /** Where the Temporal SDK's own Prometheus endpoint listens (proxied by the one above); 0 turns it off. */
  REKEY_TEMPORAL_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9465),
  /** Activities this process runs at once (each rewrap part holds two database connections); the SDK's default. */
  REKEY_MAX_CONCURRENT_ACTIVITIES: z.coerce.number().int().min(1).max(1000).optional(),
});

export const WORKER_HELP = processHelp(
  'worker',
  'rekey worker: runs rotations and migrations of the targets it serves, polling one Temporal task queue.',
  'node dist/src/worker.js [--help]   (npm run worker)',
);

/** The worker process: config from the environment, JSON logs, Prometheus metrics, migrations, then poll. */
async function run(): Promise<void> {
  const config = loadConfig();
  const ports = parseEnv(WorkerEnv);
  const logger = createLogger();
  const targetsConfig = loadTargetsConfig();
  const served = servedTargets(targetsConfig);
  const metrics = new RekeyMetrics();
  // First, so that a port in use stops the worker before it touches anything, with the variable to change.
  const metricsServer = await serveMetrics(metrics, {
    port: ports.REKEY_METRICS_PORT,
    host: ports.REKEY_METRICS_HOST,
    temporalMetricsUrl:
      ports.REKEY_TEMPORAL_METRICS_PORT > 0
        ? `http://127.0.0.1:${ports.REKEY_TEMPORAL_METRICS_PORT}/metrics`
        : undefined,
  });
  const temporalMetricsPort = ports.REKEY_TEMPORAL_METRICS_PORT;
  Runtime.install({
    logger: temporalLogger(logger),
    ...(temporalMetricsPort > 0 && {
      telemetryOptions: { metrics: { prometheus: { bindAddress: `127.0.0.1:${temporalMetricsPort}` } } },
    }),
  });
  const crypto = createRowCrypto(cryptoThreadsFromEnv());
  // The process's own key provider (REKEY_KEY_PROVIDER) serves the targets whose keys are 'default' (rekey's own
  // table): it is opened only if the worker serves one. The keys of every target it serves are read now: a missing
  // or malformed variable, wrong credentials or a missing permission stop the worker here, with the reason.
  let keys: StoreDriver | undefined;
  const processKeys = (): StoreDriver =>
    (keys ??= openStoreDriver(
      { provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE },
      process.env,
      (detected) => logger.info(detected, `key provider detected: ${detected.provider} (${detected.why})`),
      (operation, outcome) => metrics.keyStoreRequests.inc({ operation, outcome }),
    ));
  await checkServedKeys(targetsConfig, served, processKeys);
  const db = new Pool({ connectionString: config.DATABASE_URL });
  // An idle connection dropped by the server (restart, failover) is replaced on next use, not fatal.
  db.on('error', (err) => logger.warn({ err: err.message }, 'idle PostgreSQL connection lost'));
  const migrationClient = await db.connect();
  await migrate(migrationClient).finally(() => migrationClient.release());

  const clientConnection = await Connection.connect(temporalConnectionOptions(config.TEMPORAL_ADDRESS));
  await ensureSearchAttributes(clientConnection, config.TEMPORAL_NAMESPACE);
  const targets = new TargetRuntimes({ db, keys: processKeys, config: targetsConfig, served });
  const temporal = new Client({ connection: clientConnection, namespace: config.TEMPORAL_NAMESPACE });
  metrics.watch(targets, temporal);

  const connection = await NativeConnection.connect(temporalConnectionOptions(config.TEMPORAL_ADDRESS));
  const presence = new WorkerPresence(targets, (message) => logger.warn(message));
  try {
    await presence.start();
    const worker = await createWorker({
      connection,
      namespace: config.TEMPORAL_NAMESPACE,
      taskQueue: config.REKEY_TASK_QUEUE,
      db,
      keys: processKeys,
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
        targets: served.names,
        targetsFrom: served.source,
        defaultTarget: targetsConfig.defaultTarget,
        metrics: metricsAddress(metricsServer),
        metricsUrl: `http://${metricsAddress(metricsServer)}/metrics`,
        ...(keys && {
          keyProvider: keys.description,
          keys: await namedKeys(keys),
        }),
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
    keys?.close();
  }
}

/** The keys a store names, as the startup log lists them: id and fingerprint, never the key. */
async function namedKeys(keys: StoreDriver): Promise<{ id: string; fingerprint: string }[]> {
  return (await keys.list())
    .flatMap(({ kekId, fingerprint }) => (kekId === undefined ? [] : [{ id: kekId, fingerprint }]))
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * Reads the keys of every target the worker serves, before it starts: the process's own provider for the targets
 * whose keys are 'default', each target's own source for the others (when targets are named: a worker serving every
 * target checks only its own provider, as the other targets' keys may not be meant for it). Nothing is kept but the
 * process's own provider; a target's keys are read again when first used.
 */
async function checkServedKeys(
  config: TargetsConfig,
  served: ServedTargets,
  processKeys: () => StoreDriver,
): Promise<void> {
  for (const name of served.names) {
    const definition = config.targets.get(name)!;
    if (definition.keys.provider === 'default') {
      await withServedTarget(name, served, () => processKeys().reload());
    } else if (served.source !== 'every target') {
      await withServedTarget(name, served, async () => {
        const own = openTargetDriver(definition.keys, processKeys);
        try {
          await own.reload();
        } finally {
          own.close();
        }
      });
    }
  }
}

/** Runs a check of a served target's keys; its failure says which target needs them and how to serve fewer. */
async function withServedTarget(name: string, served: ServedTargets, check: () => Promise<void>): Promise<void> {
  try {
    await check();
  } catch (err) {
    if (!(err instanceof KeyMaterialError)) throw err;
    const how =
      served.source === 'every target'
        ? 'it serves every target; set REKEY_TARGETS (or REKEY_DEFAULT_TARGET) to the ones it should serve'
        : `it serves ${served.names.join(', ')} (${served.source})`;
    throw new KeyMaterialError(`target '${name}': ${err.message} (${how})`, err.source);
  }
}

function metricsAddress(server: http.Server): string {
  const address = server.address();
  return typeof address === 'object' && address !== null ? `${address.address}:${address.port}` : String(address);
}

if (require.main === module) {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(WORKER_HELP);
    process.exit(0);
  }
  run().catch((err: unknown) => {
    process.stderr.write(`rekey worker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
