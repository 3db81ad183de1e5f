// `npm run demo`: a KEK rotation end to end on embedded defaults, while a simulated application keeps reading and
// writing tenant data. Dev server with Web UI, local PostgreSQL, file keyring, worker: all in this process's care.
import { BUILTIN_TARGET } from './targets/builtin';
import fs from 'node:fs';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import type { Pool } from 'pg';
import { describeCounters, describeProgress } from './cli/format';
import { startRotation } from './client/rotations';
import { targetKeyspace } from './targets/runtime';
import { createDatabase } from './dev/databases';
import { startDevServer } from './dev/dev-server';
import { seedTenants, tenantIdFor } from './dev/tenants';
import { readToolchain } from './dev/toolchain';
import { FileKeyring } from './keyring/drivers/file';
import { generateKek } from './keyring/keyring';
import { KekRegistry } from './store/kek-registry';
import { TenantDekStore } from './store/tenant-deks';
import { TenantCrypto } from './tenant-crypto';
import { createWorker } from './worker';
import { progressQuery } from './workflows/messages';

const TENANTS = Number(process.env.REKEY_DEMO_TENANTS ?? 200_000);
const RECORDS = 2_000;
const TASK_QUEUE = 'rekey-demo';

/** A stand-in for the real service: reads tenant data, re-writes DEKs, onboards tenants, counting any error. */
class SimulatedApplication {
  reads = 0;
  writes = 0;
  created = 0;
  errors: string[] = [];
  private running = true;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly app: TenantCrypto,
    private readonly db: Pool,
  ) {}

  start(): void {
    this.loop = (async () => {
      while (this.running) {
        const i = Math.floor(Math.random() * RECORDS);
        const tenantId = tenantIdFor('tenant-', i);
        try {
          const { rows } = await this.db.query<{ ciphertext: string }>(
            'SELECT ciphertext FROM rekey.tenant_records WHERE tenant_id = $1',
            [tenantId],
          );
          if (rows[0]) await this.app.decrypt(tenantId, rows[0].ciphertext);
          this.reads++;
          if (this.reads % 4 === 0) {
            await this.app.rewriteDek(tenantIdFor('tenant-', Math.floor(Math.random() * TENANTS)));
            this.writes++;
          }
          if (this.reads % 20 === 0) {
            const newTenant = `onboarded-${this.created++}`;
            await storeRecord(this.db, newTenant, await this.app.encrypt(newTenant, `welcome ${newTenant}`));
          }
        } catch (err) {
          this.errors.push(`${tenantId}: ${(err as Error).message}`);
          await new Promise((resolve) => setTimeout(resolve, 100)); // never spin on a failing dependency
        }
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

async function storeRecord(db: Pool, tenantId: string, ciphertext: string): Promise<void> {
  await db.query(
    `INSERT INTO rekey.tenant_records (tenant_id, record_id, ciphertext) VALUES ($1, 'profile', $2)
     ON CONFLICT (tenant_id, record_id) DO UPDATE SET ciphertext = EXCLUDED.ciphertext`,
    [tenantId, ciphertext],
  );
}

function demoPort(name: string, fallback: number): number {
  const value = process.env[name];
  if (value === undefined || value === '') return fallback;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`${name} must be a port number (0 for any free port), not '${value}'`);
  }
  return port;
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const toolchain = readToolchain();
  const demoDir = path.join(toolchain.cacheDir, 'demo');
  fs.rmSync(demoDir, { recursive: true, force: true });
  fs.mkdirSync(demoDir, { recursive: true, mode: 0o700 });

  const say = (line: string) => process.stdout.write(`${line}\n`);
  say('rekey demo: starting the Temporal dev server (Web UI included) ...');
  // 0: any free port (the dev server is started again on another if one it was given is taken meanwhile).
  const server = await startDevServer({
    temporalCli: toolchain.temporalCli,
    port: demoPort('REKEY_DEMO_PORT', 7233),
    uiPort: demoPort('REKEY_DEMO_UI_PORT', 8233),
    dbFilename: path.join(demoDir, 'temporal.db'),
  });
  say(`Temporal dev server on ${server.address}, Web UI on ${server.uiUrl}`);
  // Left in place afterwards, to look at; the next run replaces it.
  const { pool: db } = await createDatabase(process.env.DATABASE_URL ?? toolchain.databaseUrl, 'rekey_demo', 12);
  const keys = FileKeyring.open(path.join(demoDir, 'keyring.json'), { create: true });
  const nativeConnection = await NativeConnection.connect({ address: server.address });
  const connection = await Connection.connect({ address: server.address });
  let application: TenantCrypto | undefined;
  let simulated: SimulatedApplication | undefined;
  try {
    const { kekId: from, fingerprint } = await generateKek(keys);
    await new KekRegistry(db, BUILTIN_TARGET).seedActive(from, fingerprint);

    say(`seeding ${TENANTS.toLocaleString('en-US')} tenants with DEKs under KEK '${from}' ...`);
    await seedTenants({ db, keys, kekId: from, count: TENANTS });
    // The keyring still names v1 as its first KEK; after the promotion the registry rightly says otherwise.
    const quiet = () => undefined;
    application = new TenantCrypto({ db, keys, registryTtlMs: 1_000, instanceId: 'demo-app-1', warn: quiet });
    await application.start();
    const plaintexts = new Map<string, string>();
    for (let i = 0; i < RECORDS; i++) {
      const tenantId = tenantIdFor('tenant-', i);
      const plaintext = `profile of ${tenantId}`;
      plaintexts.set(tenantId, plaintext);
      await storeRecord(db, tenantId, await application.encrypt(tenantId, plaintext));
    }
    simulated = new SimulatedApplication(application, db);
    simulated.start();

    const worker = await createWorker({ connection: nativeConnection, taskQueue: TASK_QUEUE, db, keys });
    const client = new Client({ connection });
    const report = await worker.runUntil(async () => {
      const started = await startRotation(
        client,
        { from, to: 'new', gracePeriod: '15s', batchSize: 500, parallelism: 2, fleetLiveWithin: '30s' },
        { taskQueue: TASK_QUEUE, keyspace: await targetKeyspace(db), startedBy: 'demo' },
      );
      say(`rotation started: workflow ${started.handle.workflowId}, while the application keeps reading and writing`);
      say(`watch it live: ${server.uiUrl}/namespaces/default/workflows/${started.handle.workflowId}`);
      const result = started.handle.result();
      let finished = false;
      void result.finally(() => (finished = true)).catch(() => undefined);
      let last = '';
      while (!finished) {
        const line = describeProgress(await started.handle.query(progressQuery));
        if (line !== last) say(`  ${line}`);
        last = line;
        await new Promise((resolve) => setTimeout(resolve, process.stdout.isTTY ? 250 : 1_000));
      }
      return result;
    });
    await simulated.stop();

    // The proof: every record the application wrote still decrypts, read back by a fresh instance.
    const reader = new TenantCrypto({ db, keys, instanceId: 'demo-verifier', warn: quiet });
    await reader.start();
    let decrypted = 0;
    for (const [tenantId, plaintext] of plaintexts) {
      const { rows } = await db.query<{ ciphertext: string }>(
        'SELECT ciphertext FROM rekey.tenant_records WHERE tenant_id = $1',
        [tenantId],
      );
      if ((await reader.decrypt(tenantId, rows[0]!.ciphertext)).toString() === plaintext) decrypted++;
    }
    await reader.stop();
    const status = await new TenantDekStore(db).kekStatus();
    const old = await new KekRegistry(db, BUILTIN_TARGET).require(report.from);

    say('');
    say(`rotation ${report.outcome}: '${report.from}' → '${report.to}' in ${report.passes} pass(es)`);
    say(`  ${describeCounters(report)}`);
    say(
      `  application during the run: ${simulated.reads} reads, ${simulated.writes} DEK writes, ${simulated.created} new tenants, ${simulated.errors.length} errors`,
    );
    say(`  tenant data that still decrypts: ${decrypted}/${plaintexts.size}`);
    say(`  DEKs per KEK now: ${JSON.stringify(status.dekCounts)} (current: ${status.currentKekId})`);
    say(`  old KEK '${old.kekId}': ${old.state}${old.retiredAt ? ` at ${old.retiredAt.toISOString()}` : ''}`);
    say(
      `  Web UI: ${server.uiUrl}/namespaces/default/workflows?query=${encodeURIComponent("WorkflowType='rotateKek'")}`,
    );
    if (simulated.errors.length > 0) say(`  first application error: ${simulated.errors[0]}`);
    const clean =
      report.outcome === 'completed' &&
      decrypted === plaintexts.size &&
      simulated.errors.length === 0 &&
      old.state === 'retired';
    if (!clean) process.exitCode = 1;

    if (process.stdin.isTTY && process.stdout.isTTY) {
      say('The dev server stays up so you can look around in the Web UI: press Ctrl-C to stop.');
      await new Promise((resolve) => process.once('SIGINT', resolve));
    }
  } finally {
    await simulated?.stop();
    await application?.stop().catch(() => undefined);
    await connection.close();
    await nativeConnection.close();
    await db.end();
    keys.close();
    await server.stop();
  }
}

main().catch((err: unknown) => {
  console.error(`rekey demo: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
