import { randomUUID } from 'node:crypto';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startMigration } from '../../src/client/migrations';
import {
  abortMigrationUpdate,
  migrationProgressQuery,
  pauseMigrationUpdate,
  pauseSignal,
  type MigrationReport,
} from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, kekOf, myceliumShape, seedLegacyInventory } from '../helpers/mycelium';
import { createDevServerEnv, queryUntil, resultWithin, within, workflowBundle } from '../helpers/temporal';

// The migration's controls are the rotation's pattern: an update's validator refuses, with the reason, what the run
// cannot honour; a signal that cannot be honoured changes nothing and says why in the report's note.
describe('rekey migrate-dek: controls the run cannot honour are refused', () => {
  let env: TestWorkflowEnvironment;
  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('a pause or an abort that reaches a migration once it has ended is refused with the reason, and its report stays as it ended', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const tokenSecret = randomUUID();
    const taskQueue = `migrate-ended-${randomUUID()}`;
    try {
      await seedLegacyInventory(db.pool, kekOf(tokenSecret), { tenants: 6, users: 3 });
      const activities = createActivities({
        db: db.pool,
        keys: testKeys(['v1']),
        env: { MYC_TOKEN_SECRET: tokenSecret },
      });
      // The run's last step (its end into the run history) is held until the test has sent its controls: the run
      // has ended its work and still answers messages.
      let reached!: () => void;
      const atEnd = new Promise<void>((resolve) => (reached = resolve));
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        activities: {
          ...activities,
          recordRun: async (...args: Parameters<typeof activities.recordRun>) => {
            reached();
            await released;
            return activities.recordRun(...args);
          },
        },
      });
      const report = await worker.runUntil(async () => {
        const { handle } = await startMigration(
          env.client,
          { target: 'mycelium', kekVersion: '1' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        try {
          await within(atEnd, 60_000, () => 'the migration did not reach its end');
          const refusal = async (send: () => Promise<unknown>) => {
            const refused = await send().catch((err: unknown) => err);
            expect(refused).toBeInstanceOf(WorkflowUpdateFailedError);
            return (refused as WorkflowUpdateFailedError).cause;
          };
          const pause = await refusal(() => handle.executeUpdate(pauseMigrationUpdate));
          expect(pause).toMatchObject({ type: 'ControlRefusedError', message: 'the migration has ended (completed)' });
          const abort = await refusal(() => handle.executeUpdate(abortMigrationUpdate, { args: ['too late'] }));
          expect(abort).toMatchObject({ type: 'ControlRefusedError', message: 'the migration has ended (completed)' });
          await handle.signal(pauseSignal);
          const noted = await queryUntil<MigrationReport>(
            handle,
            migrationProgressQuery.name,
            (p) => p.note !== undefined,
          );
          expect(noted.note).toBe('pause signal ignored: the migration has ended (completed)');
        } finally {
          // Also when an assertion failed: the worker cannot shut down while the held step waits.
          release();
        }
        return resultWithin<MigrationReport>(handle);
      });
      expect(report).toMatchObject({ outcome: 'completed', paused: false, legacyLeft: 0 });
      expect(report.abortReason).toBeUndefined();
    } finally {
      await db.drop();
    }
  });
});
