// Issue 25, "Start the way the operator's system already runs": the README's Mycelium and Talos worker commands, run
// exactly as written (only the database URL, the secrets and what names this machine's Temporal server filled in),
// on fresh databases of those systems, and the rotations and the migration they are there for.
import { randomBytes, randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runRekeyAt, type CliResult } from '../helpers/cli';
import { confirmRetireWhenAsked, MYCELIUM_ROTATE_1_TO_2 } from '../helpers/confirm';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { rotationIdIn } from '../helpers/keyspace';
import {
  createMyceliumSchema,
  gatewayReads,
  kekOf,
  seedLegacyInventory,
  type InventoryValue,
} from '../helpers/mycelium';
import { docCommands, docExports, envCommand, runScript, type RunningProcess } from '../helpers/readme';
import { checkSecrets, createTalosSchema, seedSecrets } from '../helpers/talos';
import { createDevServerEnv, resultWithin } from '../helpers/temporal';
import type { RotationReport } from '../../src/workflows';

const PAGE = 'docs/02-worker-per-database.md';

/**
 * The guide's `… npm run worker` line under `heading` of the page on workers (docs/02), with the variables the
 * section's `export` lines set before it, as one `NAME=value … npm run worker` line.
 */
function workerCommand(heading: string): string {
  const line = docCommands(PAGE, heading, 'npm run worker').find((command) => command.includes('npm run worker'));
  if (!line) throw new Error(`${PAGE} has no 'npm run worker' command under '${heading}'`);
  const exported = Object.entries(docExports(PAGE, heading, 'npm run worker')).map(([name, value]) =>
    value.startsWith('$') ? `${name}=<${value}>` : `${name}=${value}`,
  );
  return [...exported, line].join(' ');
}

describe("the guide's Mycelium and Talos commands (docs/02), on fresh databases of those systems", () => {
  let env: TestWorkflowEnvironment;
  const running: RunningProcess[] = [];

  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await Promise.all(running.map((process) => process.stop()));
    await env?.teardown();
  });

  /** What names this machine's servers, and quiet ports: the only variables the test adds to a README command. */
  function here(taskQueue: string): Record<string, string> {
    return {
      TEMPORAL_ADDRESS: env.address,
      REKEY_TASK_QUEUE: taskQueue,
      REKEY_METRICS_PORT: '0',
      REKEY_TEMPORAL_METRICS_PORT: '0',
    };
  }

  async function startWorker(line: string, fill: Record<string, string>, taskQueue: string): Promise<RunningProcess> {
    // The page's DATABASE_URL names the database it creates; the test's names its own fresh one.
    const worker = runScript(envCommand(line, fill), { ...here(taskQueue), DATABASE_URL: fill.DATABASE_URL! });
    running.push(worker);
    await worker.until('rekey worker started');
    return worker;
  }

  describe('Mycelium', () => {
    let db: TestDatabase;
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    const taskQueue = `readme-mycelium-${randomUUID()}`;
    let legacy: InventoryValue[];
    const rekey = (...args: string[]): Promise<CliResult> =>
      runRekeyAt(env.address, taskQueue, args, {
        DATABASE_URL: db.url,
      });

    beforeAll(async () => {
      // Mycelium's database as its own migrations leave it: nothing of rekey's in it yet.
      db = await createTestDatabase({ migrate: false });
      await createMyceliumSchema(db.pool);
      legacy = (await seedLegacyInventory(db.pool, kekOf(gen1), { tenants: 30, users: 4 })).values;
    });
    afterAll(async () => {
      await db?.drop();
    });

    it("Finding: the guide's migrate-dek worker command starts with MYC_TOKEN_SECRET alone, without any REKEY_KEK_<id>; and rekey migrate-dek --target mycelium, typed as Mycelium's guide types it, runs on a fresh database, taking the generation the table says and saying so", async () => {
      const worker = await startWorker(
        workerCommand('#### Before the first rotation: `rekey migrate-dek` (v1 values → per-tenant DEKs)'),
        { DATABASE_URL: db.url, MYC_TOKEN_SECRET: gen1 },
        taskQueue,
      );
      expect(worker.output()).toContain('"targets":["mycelium"]');

      const dry = await rekey('migrate-dek', '--target', 'mycelium', '--dry-run');
      expect(dry.stderr).toBe('');
      expect(dry.code).toBe(0);
      expect(dry.stdout).toContain(
        "Current KEK 1: rekey's registry records none yet, and every DEK of public.tenant (20) is labelled 1",
      );
      expect(dry.stdout).toContain(`Total left: ${legacy.length}`);
      // A dry run records nothing: the registry is still empty.
      expect((await db.pool.query(`SELECT 1 FROM rekey.keks WHERE target = 'mycelium'`)).rowCount).toBe(0);

      const run = await rekey('migrate-dek', '--target', 'mycelium', '--wait');
      expect(run.stderr).toBe('');
      expect(run.code).toBe(0);
      expect(run.stdout).toContain("migration of target 'mycelium' completed");
      expect(run.stdout).toContain('Current KEK 1:');
      expect(run.stdout).toContain('Total left: 0');
      for (const value of legacy) expect(await gatewayReads(db.pool, kekOf(gen1), value)).toBe(value.plaintext);
      const { rows } = await db.pool.query<{ kek_id: string; state: string }>(
        `SELECT kek_id, state FROM rekey.keks WHERE target = 'mycelium'`,
      );
      expect(rows).toEqual([{ kek_id: '1', state: 'active' }]);
      await worker.stop();
    });

    it("Finding: the guide's Mycelium worker command starts with the two token secrets alone, without any REKEY_KEK_<id>, and rotates generation 1 to 2 to its end", async () => {
      await startWorker(
        workerCommand('#### Rotating generation 1 to 2'),
        { DATABASE_URL: db.url, MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
        taskQueue,
      );
      const dry = await rekey(...MYCELIUM_ROTATE_1_TO_2, '--dry-run');
      expect(dry.stderr).toBe('');
      expect(dry.code).toBe(0);
      expect(dry.stdout).toContain('Tenants scanned: 31  Migrated: 31  Already done: 0  Skipped: 0  Unreadable: 0');

      const started = await rekey(...MYCELIUM_ROTATE_1_TO_2, '--grace', '1s');
      expect(started.stderr).toBe('');
      expect(started.code).toBe(0);
      // The worker migrated the database: its identity names the rotation.
      const handle = env.client.workflow.getHandle(await rotationIdIn(db.pool, 'mycelium'));
      await confirmRetireWhenAsked(rekey, handle, 'mycelium', 'old token_secret removed');
      expect(await resultWithin<RotationReport>(handle)).toMatchObject({ outcome: 'completed', from: '1', to: '2' });
      const { rows } = await db.pool.query<{ label: number; n: string }>(
        `SELECT kek_version AS label, count(*) AS n FROM public.tenant WHERE encrypted_dek IS NOT NULL GROUP BY 1`,
      );
      expect(rows).toEqual([{ label: 2, n: '31' }]);
      for (const value of legacy) expect(await gatewayReads(db.pool, kekOf(gen2), value)).toBe(value.plaintext);
    });
  });

  it("Finding: the guide's Talos worker command starts with TALOS_KEK_<id> alone, without any REKEY_KEK_<id>, and a rotation of Talos's secrets runs to its end", async () => {
    const db = await createTestDatabase({ migrate: false });
    const taskQueue = `readme-talos-${randomUUID()}`;
    try {
      await createTalosSchema(db.pool);
      const [v1, v2] = [randomBytes(32), randomBytes(32)];
      const secrets = await seedSecrets(db.pool, v1, 'v1', 40, 'v1');
      const worker = await startWorker(
        workerCommand('### Talos (`talos`)'),
        {
          DATABASE_URL: db.url,
          TALOS_KEK_v1: v1.toString('base64url'),
          TALOS_KEK_v2: v2.toString('base64url'),
          REKEY_ADMIN_TOKEN: randomBytes(16).toString('hex'),
        },
        taskQueue,
      );
      expect(worker.output()).toContain('"targets":["talos"]');
      // The operator's CLI names the database (a target's keyspace, and so its rotations' id, is there).
      const rekey = (...args: string[]) =>
        runRekeyAt(env.address, taskQueue, args, {
          DATABASE_URL: db.url,
        });
      const started = await rekey('rotate', '--target', 'talos', '--from', 'v1', '--to', 'v2', '--grace', '1s');
      expect(started.stderr).toBe('');
      expect(started.code).toBe(0);
      const handle = env.client.workflow.getHandle(await rotationIdIn(db.pool, 'talos'));
      await confirmRetireWhenAsked(rekey, handle, 'talos', 'TALOS_KEK_v1 removed');
      expect(await resultWithin<RotationReport>(handle)).toMatchObject({ outcome: 'completed', from: 'v1', to: 'v2' });
      expect(await checkSecrets(db.pool, v2, 'v2', secrets)).toEqual([]);
      await worker.stop();
    } finally {
      await db.drop();
    }
  });
});
