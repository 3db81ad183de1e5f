import { Client, Connection } from '@temporalio/client';
import { Pool } from 'pg';
import { z } from 'zod';
import { loadConfig, parseEnv } from '../config';
import { buildAdminServer } from './server';

const AdminEnv = z.object({
  REKEY_ADMIN_TOKEN: z
    .string({ error: 'REKEY_ADMIN_TOKEN is required: the bearer token callers must send' })
    .min(16, 'REKEY_ADMIN_TOKEN must be at least 16 characters'),
  REKEY_ADMIN_PORT: z.coerce.number().int().min(1).max(65535).default(8080),
  REKEY_ADMIN_HOST: z.string().default('127.0.0.1'),
  REKEY_ENV_PREFIX: z.string().default('REKEY'),
});

/** The admin HTTP API process (`node dist/src/admin/main.js`). */
async function run(): Promise<void> {
  const config = loadConfig();
  const admin = parseEnv(AdminEnv);
  const db = new Pool({ connectionString: config.DATABASE_URL, max: 4 });
  const connection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const server = await buildAdminServer({
    client: new Client({ connection, namespace: config.TEMPORAL_NAMESPACE }),
    db,
    taskQueue: config.REKEY_TASK_QUEUE,
    token: admin.REKEY_ADMIN_TOKEN,
    // As in the runbook: after <PREFIX>_CURRENT_KEK_ID names a new KEK, rotate-all rotates to it.
    configuredCurrentKekId: process.env[`${admin.REKEY_ENV_PREFIX}_CURRENT_KEK_ID`],
    logger: true,
  });
  await server.listen({ port: admin.REKEY_ADMIN_PORT, host: admin.REKEY_ADMIN_HOST });
}

run().catch((err: unknown) => {
  process.stderr.write(`rekey admin: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
