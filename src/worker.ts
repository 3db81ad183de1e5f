import path from 'node:path';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { Pool } from 'pg';
import { createActivities } from './activities';
import { loadConfig } from './config';
import { openKeyProvider, type KeyProvider } from './keys';

export const workflowsPath = path.join(__dirname, 'workflows');

export interface RekeyWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  taskQueue: string;
  db: Pool;
  keys: KeyProvider;
  /** A pre-built bundle (tests build it once); otherwise the workflows are bundled from source. */
  workflowBundle?: WorkerOptions['workflowBundle'];
}

export async function createWorker(options: RekeyWorkerOptions): Promise<Worker> {
  const { connection, namespace, taskQueue, db, keys, workflowBundle } = options;
  return Worker.create({
    connection,
    namespace,
    taskQueue,
    activities: createActivities({ db, keys }),
    ...(workflowBundle ? { workflowBundle } : { workflowsPath }),
  });
}

async function run(): Promise<void> {
  const config = loadConfig();
  const keys = openKeyProvider({ provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE });
  const db = new Pool({ connectionString: config.DATABASE_URL });
  const connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  try {
    const worker = await createWorker({
      connection,
      namespace: config.TEMPORAL_NAMESPACE,
      taskQueue: config.REKEY_TASK_QUEUE,
      db,
      keys,
    });
    await worker.run();
  } finally {
    await connection.close();
    await db.end();
    keys.close();
  }
}

if (require.main === module) {
  run().catch((err: unknown) => {
    process.stderr.write(`rekey worker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
