// `rekey status --watch` of a migration prints its end once: the run that has its outcome and is still recording its
// end (RUNNING to Temporal) is not printed by the watch's loop as well as by the status it ends with.
import { randomUUID } from 'node:crypto';
import { Client } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { CliContext } from '../../src/cli/context';
import { watchMigration } from '../../src/cli/commands/status';
import { startMigration } from '../../src/client/migrations';
import type { MigrationReport } from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, kekOf, myceliumShape, seedLegacyInventory } from '../helpers/mycelium';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

describe('rekey status --watch of a migration', () => {
  const server = useTimeSkippingEnv();

  it("Finding: status --watch of a migration printed its last line twice (the watch's line while the run records its end, then the status it ends with): it is printed once", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `watch-once-${randomUUID()}`;
    const secret = randomUUID();
    // The run's end is recorded into rekey.run_history: held here, the run stays RUNNING with its outcome.
    const holder = await db.pool.connect();
    let held = false;
    try {
      await seedLegacyInventory(db.pool, kekOf(secret), { tenants: 2, users: 2 });
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE rekey.run_history IN EXCLUSIVE MODE');
      held = true;
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: { MYC_TOKEN_SECRET: secret } }),
      });
      const lines: string[] = [];
      let queries = 0;
      // The watch's own reads, counted through the client's interceptor: the test lets the run end once the watch has
      // read it twice while it was recording its end.
      const client = new Client({
        connection: server.env.connection,
        interceptors: { workflow: [{ query: (input, next) => (queries++, next(input)) }] },
      });
      class Watching extends CliContext {
        override temporal(): Promise<Client> {
          return Promise.resolve(client);
        }
      }
      const context = new Watching({ address: server.env.address, namespace: 'default', taskQueue }, {}, (line) =>
        lines.push(line),
      );
      await worker.runUntil(async () => {
        const { handle } = await startMigration(
          server.env.client,
          { target: 'mycelium', kekVersion: '1' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil<MigrationReport>(handle, (report) => report.phase === 'done');
        const watching = watchMigration(context, handle.workflowId);
        await eventually('the watch read the run twice while it records its end', () => queries >= 2, {
          describe: () => `queries: ${queries}; lines: ${lines.join(' | ')}`,
        });
        await holder.query('COMMIT');
        held = false;
        await watching;
        await resultWithin(handle);
      });
      expect(lines[0]).toMatch(/^migration \S+: Succeeded: /);
      const progress = lines[1]!;
      expect(lines.filter((line) => line === progress)).toEqual([progress]);
      expect(lines.filter((line) => line.trim() === progress.trim())).toHaveLength(1);
    } finally {
      if (held) await holder.query('ROLLBACK');
      holder.release();
      await db.drop();
    }
  });
});
