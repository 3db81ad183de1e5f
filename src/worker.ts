import path from 'node:path';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { Pool } from 'pg';
import { createActivities } from './activities';
import { loadConfig } from './config';

export const workflowsPath = path.join(__dirname, 'workflows');

export interface RekeyWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  taskQueue: string;
  db: Pool;
  /** A pre-built bundle (tests build it once); otherwise the workflows are bundled from source. */
  workflowBundle?: WorkerOptions['workflowBundle'];
}

export async function createWorker(options: RekeyWorkerOptions): Promise<Worker> {
  const { connection, namespace, taskQueue, db, workflowBundle } = options;
  return Worker.create({
    connection,
    namespace,
    taskQueue,
    activities: createActivities({ db }),
    ...(workflowBundle ? { workflowBundle } : { workflowsPath }),
  });
}

async function run(): Promise<void> {
  const config = loadConfig();
  const db = new Pool({ connectionString: config.DATABASE_URL });
  const connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  try {
    const worker = await createWorker({
      connection,
      namespace: config.TEMPORAL_NAMESPACE,
      taskQueue: config.REKEY_TASK_QUEUE,
      db,
    });
    await worker.run();
  } finally {
    await connection.close();
    await db.end();
  }
}

if (require.main === module) {
  run().catch((err: unknown) => {
    process.stderr.write(`rekey worker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
