import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { Pool } from 'pg';
import { startDevServer } from './dev/dev-server';
import { readToolchain } from './dev/toolchain';
import { migrate } from './store/migrate';
import { createWorker } from './worker';
import { rotateKek } from './workflows';

async function main(): Promise<void> {
  const toolchain = readToolchain();
  const server = await startDevServer({
    temporalCli: toolchain.temporalCli,
    port: Number(process.env.REKEY_DEMO_PORT ?? 7233),
    uiPort: Number(process.env.REKEY_DEMO_UI_PORT ?? 8233),
    dbFilename: path.join(toolchain.cacheDir, 'demo-temporal.db'),
  });
  const db = new Pool({ connectionString: process.env.DATABASE_URL ?? toolchain.databaseUrl });
  try {
    const migrationClient = await db.connect();
    await migrate(migrationClient).finally(() => migrationClient.release());
    const worker = await createWorker({
      connection: await NativeConnection.connect({ address: server.address }),
      taskQueue: 'rekey-demo',
      db,
    });
    const client = new Client({ connection: await Connection.connect({ address: server.address }) });
    const workflowId = `rekey-demo-${randomUUID()}`;
    const result = await worker.runUntil(
      client.workflow.execute(rotateKek, {
        taskQueue: 'rekey-demo',
        workflowId,
        args: [{ from: 'v1', to: 'v2', gracePeriod: '2 seconds' }],
      }),
    );
    console.log('workflow result:', JSON.stringify(result));
    console.log(`Web UI: ${server.uiUrl}/namespaces/default/workflows/${workflowId}`);
    if (process.stdin.isTTY) {
      console.log('The dev server stays up so you can look around: press Ctrl-C to stop.');
      await new Promise((resolve) => process.once('SIGINT', resolve));
    }
  } finally {
    await db.end();
    await server.stop();
  }
}

main().catch((err: unknown) => {
  console.error(`rekey demo: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
