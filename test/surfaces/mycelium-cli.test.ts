import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';
import { migrate } from '../../src/store/migrate';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import {
  checkWithOneKek,
  createMyceliumSchema,
  kekOf,
  seedMyceliumTenants,
  type SeededTenant,
} from '../helpers/mycelium';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';

const starter = path.join(projectRoot, 'dist', 'src', 'starter.js');

describe("Mycelium's own command, on rekey: rekey rotate --target mycelium --from-version 1 --to-version 2", () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let worker: Worker;
  let running: Promise<void>;
  let targets: TargetRuntimes;
  let tenants: SeededTenant[];
  const taskQueue = 'rekey-mycelium-cli';
  const [gen1, gen2] = [randomUUID(), randomUUID()];

  /** The built CLI, as an operator runs it: DATABASE_URL names the Mycelium database. */
  function rekey(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [starter, '--address', env.address, '--task-queue', taskQueue, ...args],
        { env: { PATH: process.env.PATH, DATABASE_URL: db.url }, timeout: 90_000 },
        (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
      );
    });
  }

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase({ migrate: false });
    await createMyceliumSchema(db.pool);
    tenants = [
      ...(await seedMyceliumTenants(db.pool, 120, kekOf(gen1), 1)),
      ...(await seedMyceliumTenants(db.pool, 10, kekOf(gen2), 2)),
      ...(await seedMyceliumTenants(db.pool, 7, null, 1)),
    ];
    const client = await db.pool.connect();
    await migrate(client).finally(() => client.release());
    // The worker holds the old token_secret in MYC_OLD_TOKEN_SECRET and the new one in MYC_TOKEN_SECRET.
    const keys = testKeys(['v1']);
    targets = new TargetRuntimes({
      db: db.pool,
      keys,
      env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
    });
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue,
      db: db.pool,
      keys,
      targets,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
  });

  afterAll(async () => {
    worker?.shutdown();
    await running;
    await targets?.close();
    await db?.drop();
    await env?.teardown();
  });

  it("--dry-run prints Mycelium's counters and the census, and writes nothing", async () => {
    const dry = await rekey('rotate', '--target', 'mycelium', '--from-version', '1', '--to-version', '2', '--dry-run');
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain('From version: 1');
    expect(dry.stdout).toContain('To version: 2');
    expect(dry.stdout).toContain(
      'Tenants scanned: 137  Migrated: 120  Already done: 10  Skipped: 7  Unreadable: 0  Relabelled: 0  CAS conflicts: 0',
    );
    expect(dry.stdout).toContain("KEK '1': 120 rows; of 120 sampled, 120 read by the format, 120 open under '1'");
    expect(dry.stdout).toContain('KEK (none): 7 rows hold no value');
    expect(await checkWithOneKek(db.pool, kekOf(gen1), 1, tenants.slice(0, 120))).toEqual([]);
  });

  it('the rotation runs to its end: it waits for the operator to discard the old token_secret, then retires generation 1', async () => {
    const rotation = rekey(
      'rotate',
      '--target',
      'mycelium',
      '--from-version',
      '1',
      '--to-version',
      '2',
      '--grace',
      '1s',
      '--wait',
    );
    let status = '';
    for (let i = 0; i < 300 && !status.includes('waiting for the application'); i++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      status = (await rekey('status', 'mycelium')).stdout;
    }
    expect(status).toContain(
      'waiting for the application: discard the old token_secret (generation 1) from Vault, the environment and MYC_OLD_TOKEN_SECRET; then confirm',
    );
    expect(status).toContain('then: rekey confirm kek-rotation-mycelium --step retire --note "…"');
    const confirmed = await rekey('confirm', 'mycelium', '--step', 'retire', '--note', 'old secret removed from Vault');
    expect(confirmed).toMatchObject({ code: 0, stdout: 'retire confirmed: old secret removed from Vault\n' });
    const done = await rotation;
    expect(done.stderr).toBe('');
    expect(done.code).toBe(0);
    expect(done.stdout).toContain('From version: 1');
    expect(done.stdout).toMatch(/rotation kek-rotation-mycelium@\S+: completed/);
    expect(done.stdout).toContain('Tenants scanned: 137  Migrated: 120  Already done: 10  Skipped: 7');
    expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, tenants)).toEqual([]);
    const kekStatus = (await rekey('kek-status', '--target', 'mycelium')).stdout;
    expect(kekStatus).toContain('target mycelium: current KEK 2');
    expect(kekStatus).toMatch(/ {2}1 +retired +0 DEKs/);
    expect(kekStatus).toMatch(/ {2}2 +active +130 DEKs/);
    expect(kekStatus).toContain('7 row(s) hold no DEK yet');
  });
});
