import { Client, Connection } from '@temporalio/client';
import { z } from 'zod';
import { loadConfig, parseEnv } from '../config';
import { temporalConnectionOptions } from '../temporal-connection';
import { processHelp } from '../env-vars';
import { webUiBase, webUiLink } from '../rotation/web-ui-link';
import { openStoreDriver } from '../keyring/open';
import { loadTargetsConfig } from '../targets/config';
import { TargetRuntimes } from '../targets/runtime';
import { configuredCurrentKekId } from '../targets/target';
import { createLogger } from '../observability/logger';
import { buildAdminServer } from './server';
import { openPool } from '../store/connect';

const AdminEnv = z.object({
  REKEY_ADMIN_TOKEN: z
    .string({ error: 'REKEY_ADMIN_TOKEN is required: the bearer token callers must send' })
    .min(16, 'REKEY_ADMIN_TOKEN must be at least 16 characters'),
  /** 0: any free port; the address it listens on is logged ('rekey admin API listening on http://…'). */
  REKEY_ADMIN_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  REKEY_ADMIN_HOST: z.string().default('127.0.0.1'),
});

/** The admin HTTP API process (`node dist/src/admin/main.js`). */
async function run(): Promise<void> {
  const config = loadConfig();
  const admin = parseEnv(AdminEnv);
  webUiBase(); // a malformed REKEY_WEB_UI_URL stops the API here, not in every answer
  const targetsConfig = loadTargetsConfig();
  // Opening a connection is bounded (the URL's connect_timeout, else 10 s): a silent database answers 503, not a hang.
  const db = openPool(config.DATABASE_URL, { max: 4 });
  // An idle connection the server ends (a failover, a restart, pg_terminate_backend) is dropped from the pool and
  // replaced on next use; without a listener its 'error' event ended the process (seen on a rotate-all under load).
  const log = createLogger();
  db.on('error', (err) => log.warn({ err: err.message }, 'idle PostgreSQL connection lost; replaced on next use'));
  const connection = await Connection.connect(temporalConnectionOptions(config.TEMPORAL_ADDRESS));
  const targets = new TargetRuntimes({
    db,
    keys: () => openStoreDriver({ provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE }),
    config: targetsConfig,
  });
  const server = await buildAdminServer({
    client: new Client({ connection, namespace: config.TEMPORAL_NAMESPACE }),
    targets,
    defaultTarget: targetsConfig.defaultTarget,
    taskQueue: config.REKEY_TASK_QUEUE,
    token: admin.REKEY_ADMIN_TOKEN,
    // As in the runbook: after <PREFIX>_CURRENT_KEK_ID names a new KEK, rotate-all rotates to it.
    configuredCurrentKekId: (target) => configuredCurrentKekId(targets.definition(target), process.env),
    webUiUrl: (workflowId) =>
      webUiLink(process.env, config.TEMPORAL_NAMESPACE, `workflows/${encodeURIComponent(workflowId)}`),
    logger: true,
  });
  await server.listen({
    port: admin.REKEY_ADMIN_PORT,
    host: admin.REKEY_ADMIN_HOST,
    listenTextResolver: (address) => `rekey admin API listening on ${address}`,
  });
}

export const ADMIN_HELP = processHelp(
  'admin',
  "rekey admin API: the gateway runbook's HTTP API (rotate-all, rotation-status, kek-status, controls) over rekey.",
  'node dist/src/admin/main.js [--help]   (npm run admin)',
);

if (process.argv.includes('--help') || process.argv.includes('-h')) {
  process.stdout.write(ADMIN_HELP);
  process.exit(0);
}

run().catch((err: unknown) => {
  process.stderr.write(`rekey admin: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
