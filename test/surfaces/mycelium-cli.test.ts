import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { projectRoot } from '../../src/project-paths';
import type { MigrationReport } from '../../src/workflows';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import { runRekeyAt, type CliResult } from '../helpers/cli';
import { confirmRetireWhenAsked, MYCELIUM_ROTATE_1_TO_2 } from '../helpers/confirm';
import { createTestDatabase, migrateDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { testKeys } from '../helpers/keys';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { migrationWorkflowIdOf } from '../../src/rotation/identity';
import {
  checkWithOneKek,
  createMyceliumSchema,
  insertLegacyTotpUser,
  gatewayReads,
  SYSTEM_TENANT,
  kekOf,
  seedMyceliumTenants,
  type SeededTenant,
} from '../helpers/mycelium';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';

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
  function rekey(...args: string[]): Promise<CliResult> {
    return runRekeyAt(env.address, taskQueue, args, {
      DATABASE_URL: db.url,
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
    await migrateDatabase(db.pool);
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
    const dry = await rekey(...MYCELIUM_ROTATE_1_TO_2, '--dry-run');
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
    const rotation = rekey(...MYCELIUM_ROTATE_1_TO_2, '--grace', '1s', '--wait');
    let status = '';
    await eventually(
      "'rekey status' showing the rotation waiting for confirmation",
      async () => {
        status = (await rekey('status', 'mycelium')).stdout;
        return status.includes('Waiting for confirmation');
      },
      { every: 200, describe: () => `last status: ${status}` },
    );
    const rotationId = await rotationIdIn(db.pool, 'mycelium');
    // The step, then the exact command that confirms it, on the status line (the instructions said "then confirm").
    expect(status).toContain(
      `Waiting for confirmation: discard the old token_secret (generation 1) from Vault, the environment and MYC_OLD_TOKEN_SECRET; then rekey confirm ${rotationId} --step retire --note "…"\n`,
    );
    expect(status).not.toContain('  then: ');
    const handle = env.client.workflow.getHandle(rotationId);
    const confirmed = await confirmRetireWhenAsked(rekey, handle, 'mycelium', 'old secret removed from Vault');
    expect(confirmed).toMatchObject({ code: 0, stdout: 'retire confirmed: old secret removed from Vault\n' });
    const done = await rotation;
    expect(done.stderr).toBe('');
    expect(done.code).toBe(0);
    expect(done.stdout).toContain('From version: 1');
    expect(done.stdout).toMatch(
      new RegExp(`rotation ${rotationId.replace('.', '\\.')}@\\S+: Succeeded: '1' → '2': 120 of 120 rows moved`),
    );
    expect(done.stdout).toContain('Tenants scanned: 137  Migrated: 120  Already done: 10  Skipped: 7');
    expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, tenants)).toEqual([]);
    const kekStatus = (await rekey('kek-status', '--target', 'mycelium')).stdout;
    expect(kekStatus).toContain('target mycelium: current KEK 2');
    expect(kekStatus).toMatch(/ {2}1 +retired +0 DEKs/);
    expect(kekStatus).toMatch(/ {2}2 +active +130 DEKs/);
    expect(kekStatus).toContain('7 row(s) hold no DEK yet');
  });

  it("migrate-dek: the dry run lists the v1 values left; the run moves them under the system DEK it provisions, in Mycelium's terms", async () => {
    // An old gateway's v1 values under the current token_secret, and the system tenant's row without a DEK yet.
    await db.pool.query(`INSERT INTO public.tenant (id, name) VALUES ($1, 'system')`, [SYSTEM_TENANT]);
    const totp = await insertLegacyTotpUser(db.pool, kekOf(gen2), 'ops@example.com', 'JBSWY3DPEHPK3PXP');

    const dry = await rekey('migrate-dek', '--target', 'mycelium', '--dry-run');
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain("dry run of the migration of target 'mycelium': nothing was written");
    expect(dry.stdout).toContain('TOTP fields to migrate: 1');
    expect(dry.stdout).toContain(`  ${SYSTEM_TENANT}: 1`);
    expect(dry.stdout).toContain('Total left: 1');
    expect(await gatewayReads(db.pool, kekOf(gen2), totp)).toBe(totp.plaintext);

    const run = await rekey('migrate-dek', '--target', 'mycelium', '--wait');
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("migration of target 'mycelium' completed");
    expect(run.stdout).toContain('Tenants scanned: 138');
    expect(run.stdout).toContain('TOTP fields migrated: 1');
    expect(run.stdout).toContain('Telegram fields migrated: 0');
    expect(run.stdout).toContain('Webhook secrets migrated: 0');
    expect(run.stdout).toContain('DEKs provisioned: 1');
    expect(run.stdout).toContain('Total left: 0');
    const { rows } = await db.pool.query<{ v: string }>(
      `SELECT mfa #>> '{totp,enabled,secret}' AS v FROM public."user" WHERE id = $1`,
      [totp.row],
    );
    expect(rows[0]!.v.startsWith('v2:')).toBe(true);
    expect(await gatewayReads(db.pool, kekOf(gen2), totp)).toBe(totp.plaintext);
  });

  it("Finding: docs/02 said migrate-dek provisions missing DEKs, and rotate-kek's Skipped was not explained: migrate-dek provisions a DEK only for a tenant whose v1 values it moves, a tenant with neither keeps none, and a rotation counts those tenants as Skipped, writing nothing to them", async () => {
    // The migration above provisioned the system tenant's DEK (DEKs provisioned: 1) and no other: the 7 tenants
    // seeded without a DEK had no v1 value, and the gateway provisions theirs when it first needs one.
    const withoutDek = tenants.filter((tenant) => tenant.dek === null).map((tenant) => tenant.id);
    expect(withoutDek).toHaveLength(7);
    const { rows } = await db.pool.query<{ id: string; encrypted_dek: string | null }>(
      'SELECT id::text, encrypted_dek FROM public.tenant WHERE id = ANY($1::uuid[]) OR id = $2 ORDER BY id',
      [withoutDek, SYSTEM_TENANT],
    );
    expect(rows.filter((row) => row.encrypted_dek === null).map((row) => row.id)).toEqual([...withoutDek].sort());
    expect(rows.find((row) => row.id === SYSTEM_TENANT)?.encrypted_dek).not.toBeNull();
    // The rotation above counted them as Skipped (7), beside the 130 with a DEK: docs/02 says what Skipped counts.
    const page = fs.readFileSync(path.join(projectRoot, 'docs/02-worker-per-database.md'), 'utf8').replace(/\s+/g, ' ');
    expect(page).toContain(
      '`Skipped` counts the tenants the run wrote nothing to: those with no DEK yet (`encrypted_dek` NULL) and those whose DEK is on a generation other than the two named',
    );
    expect(page).toContain('A tenant that has v1 values and no DEK gets one');
    expect(page).not.toContain('Missing DEKs are provisioned');
  });

  it("migrate-dek through the admin API, for the system tenant only; then the CLI's status of it, and its refusals", async () => {
    const totp = await insertLegacyTotpUser(db.pool, kekOf(gen2), 'late@example.com', 'GEZDGNBVGY3TQOJQ');
    const api = await buildAdminServer({
      client: env.client,
      targets,
      defaultTarget: 'mycelium',
      taskQueue,
      token: 'migration-token',
      configuredCurrentKekId: () => undefined,
    });
    try {
      const call = (method: 'GET' | 'POST', url: string, payload?: object) =>
        api.inject({ method, url, headers: { authorization: 'Bearer migration-token' }, ...(payload && { payload }) });
      const bad = await call('POST', '/admin/v1/migrations/migrate-dek', { tenant: SYSTEM_TENANT });
      expect(bad.statusCode).toBe(400);
      const started = await call('POST', '/admin/v1/migrations/migrate-dek', { tenant_id: SYSTEM_TENANT });
      expect(started.statusCode).toBe(202);
      // Its id names the keyspace; the target's shorthand, dek-migration-mycelium, names it too.
      const migrationId = migrationWorkflowIdOf('mycelium', await keyspaceIn(db.pool, 'mycelium'));
      expect(started.json()).toMatchObject({
        op_id: migrationId,
        status_url: `/admin/v1/migrations/${encodeURIComponent(migrationId)}`,
      });
      let status = (await call('GET', '/admin/v1/migrations/dek-migration-mycelium')).json<{
        execution_status: string;
        report?: MigrationReport;
      }>();
      await eventually(
        'the migration no longer running',
        async () => {
          status = (await call('GET', '/admin/v1/migrations/dek-migration-mycelium')).json();
          return status.execution_status !== 'RUNNING';
        },
        { every: 100, describe: () => `last status: ${JSON.stringify(status)}` },
      );
      expect(status.execution_status).toBe('COMPLETED');
      expect(status.report).toMatchObject({ outcome: 'completed', tenantId: SYSTEM_TENANT, tenants: 1, legacyLeft: 0 });
      expect(status.report!.totals).toMatchObject({ migrated: 1, unreadable: 0 });
      expect((await call('POST', '/admin/v1/migrations/dek-migration-mycelium/pause')).statusCode).toBe(409);
      expect((await call('GET', '/admin/v1/migrations/dek-migration-nobody')).statusCode).toBe(404);
    } finally {
      await api.close();
    }
    expect(await gatewayReads(db.pool, kekOf(gen2), totp)).toBe(totp.plaintext);

    const migrationId = migrationWorkflowIdOf('mycelium', await keyspaceIn(db.pool, 'mycelium'));
    const status = await rekey('status', 'dek-migration-mycelium');
    expect(status.stderr).toBe('');
    expect(status.stdout).toContain(`migration ${migrationId}: Succeeded: 1 of 1 values moved under the tenants' DEKs`);
    expect(status.stdout).toContain(`Tenant: ${SYSTEM_TENANT} (only the values under its DEK)`);
    expect(status.stdout).toContain('TOTP fields migrated: 1');
    const pause = await rekey('pause', 'dek-migration-mycelium');
    expect(pause.code).not.toBe(0);
    expect(pause.stderr).toContain(`migration ${migrationId} is completed, not running`);
    const nobody = randomUUID();
    const refused = await rekey('migrate-dek', '--target', 'mycelium', '--tenant-id', nobody, '--wait');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(
      `target 'mycelium' has no tenant '${nobody}' in public.tenant: check the tenant id`,
    );
  });
});
