// `npm run chaos -- [--tenants N] [--scenarios a,b] [--kills K] [--no-postgres-restart]`: rotations under faults. Every scenario records
// each tenant's DEK fingerprint and some tenant data first, and checks afterwards that every DEK is byte-identical,
// the data decrypts, nothing is stale and the old KEK is retired (or, after an abort, that both keys still work).
// Exits non-zero on any loss.
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { buildAdminServer } from '../src/admin/server';
import { TargetRuntimes, targetKeyspace } from '../src/targets/runtime';
import { failureMessage, startRotation, type StartOutcome } from '../src/client/rotations';
import { dekFingerprints, seedTenants, tenantIdFor } from '../src/dev/tenants';
import { readToolchain } from '../src/dev/toolchain';
import { EnvKeyProvider } from '../src/keyring/drivers/env';
import { projectRoot } from '../src/project-paths';
import type { RotationRequest } from '../src/rotation/rotation-input';
import { KekRegistry } from '../src/store/kek-registry';
import { TenantDekStore } from '../src/store/tenant-deks';
import { TenantCrypto } from '../src/tenant-crypto';
import { pauseUpdate, resumeSignal, resumeUpdate, abortSignal } from '../src/workflows';
import {
  envKeys,
  freshDatabase,
  provenance,
  sleep,
  spawnWorker,
  startServer,
  TASK_QUEUE,
  temporalClient,
  type WorkerProcess,
} from './harness';
import { kmsScenario, myceliumScenario, talosScenario, type TargetVerdict } from './chaos-targets';
import { storedKek } from '../src/keyring/keyring';

interface Options {
  tenants: number;
  scenarios: string[];
  kills: number;
  postgresRestart: boolean;
}

interface Row {
  scenario: string;
  faults: string;
  tenantsChecked: number;
  losses: number;
  note: string;
}

const ROTATION: RotationRequest = {
  from: 'v1',
  to: 'v2',
  batchSize: 20,
  parallelism: 2,
  sliceTimeBudget: '2s',
  gracePeriod: '1s',
};
const DATA_TENANTS = 200;
const SCENARIO_TIMEOUT_MS = 240_000;

/** One scenario's world: its own dev server (on-disk), database, keys, worker process and tenant data. */
class World {
  readonly keys: EnvKeyProvider;
  readonly keyEnv: Record<string, string>;
  worker!: WorkerProcess;
  client!: Client;
  private closeClient!: () => Promise<void>;
  before = new Map<string, string>();
  readonly data = new Map<string, string>();
  private server!: Awaited<ReturnType<typeof startServer>>;
  private database!: Awaited<ReturnType<typeof freshDatabase>>;
  private readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-chaos-'));

  constructor(readonly tenants: number) {
    const { env, provider } = envKeys(['v1', 'v2'], 'v1');
    this.keyEnv = env;
    this.keys = provider;
  }

  get db() {
    return this.database.pool;
  }

  get databaseUrl(): string {
    return this.database.url;
  }

  get address(): string {
    return this.server.address;
  }

  async start(): Promise<void> {
    this.server = await startServer(readToolchain(), path.join(this.dir, 'temporal.db'));
    this.database = await freshDatabase('rekey_chaos');
    await new KekRegistry(this.db, BUILTIN_TARGET).seedActive('v1', (await storedKek(this.keys, 'v1')).fingerprint);
    await seedTenants({ db: this.db, keys: this.keys, kekId: 'v1', count: this.tenants });
    const app = new TenantCrypto({ db: this.db, keys: this.keys, instanceId: 'chaos-seeder' });
    await app.start();
    for (let i = 0; i < DATA_TENANTS; i++) {
      const tenantId = tenantIdFor('tenant-', Math.floor((i * this.tenants) / DATA_TENANTS));
      this.data.set(tenantId, await app.encrypt(tenantId, `data of ${tenantId}`));
    }
    await app.stop();
    this.before = await dekFingerprints(this.db, this.keys);
    ({ client: this.client, close: this.closeClient } = await temporalClient(this.server.address));
    this.startWorker();
  }

  crashes = 0;

  startWorker(): void {
    if (this.worker?.crashed()) this.crashes++;
    this.worker = spawnWorker({ databaseUrl: this.database.url, address: this.server.address, keyEnv: this.keyEnv });
  }

  async restartServer(): Promise<void> {
    const port = Number(this.server.address.split(':')[1]);
    await this.server.stop();
    await sleep(500);
    this.server = await startServer(readToolchain(), path.join(this.dir, 'temporal.db'), port);
  }

  async rotate(request: RotationRequest = ROTATION): Promise<StartOutcome> {
    return startRotation(this.client, request, { taskQueue: TASK_QUEUE, keyspace: await targetKeyspace(this.db) });
  }

  stale(): Promise<number> {
    return new TenantDekStore(this.db).countOnKek('v1');
  }

  /** Waits until at least `fraction` of the tenants have left v1 (a point in the middle of the rewrap). */
  async waitForRewrapped(fraction: number): Promise<void> {
    const deadline = Date.now() + 120_000;
    while ((await this.stale()) > this.tenants * (1 - fraction)) {
      if (Date.now() > deadline) throw new Error(`the rewrap never reached ${Math.round(fraction * 100)}%`);
      await sleep(50);
    }
  }

  /** Counts what was lost: DEKs changed or gone, data that no longer decrypts, stale rows, a wrong KEK state. */
  async losses(expect: {
    retired: boolean;
    except?: string;
  }): Promise<{ losses: number; checked: number; notes: string[] }> {
    const notes: string[] = [];
    let losses = 0;
    let after: Map<string, string>;
    try {
      after = await dekFingerprints(this.db, this.keys, expect.except);
    } catch (err) {
      after = new Map();
      notes.push(`DEKs do not unwrap: ${(err as Error).message}`);
    }
    for (const [tenantId, fingerprint] of this.before) {
      if (tenantId === expect.except) continue;
      if (after.get(tenantId) !== fingerprint) losses++;
    }
    const reader = new TenantCrypto({
      db: this.db,
      keys: this.keys,
      instanceId: 'chaos-verifier',
      warn: () => undefined,
    });
    await reader.start();
    for (const [tenantId, ciphertext] of this.data) {
      if (tenantId === expect.except) continue;
      try {
        if ((await reader.decrypt(tenantId, ciphertext)).toString() !== `data of ${tenantId}`) losses++;
      } catch {
        losses++;
      }
    }
    await reader.stop();
    if (this.worker?.crashed()) this.crashes++;
    if (this.crashes > 0) {
      losses += this.crashes;
      notes.push(`the worker crashed ${this.crashes} time(s) (see bench/results/worker.log.tmp)`);
    }
    const registry = new KekRegistry(this.db, BUILTIN_TARGET);
    const v1 = (await registry.get('v1'))?.state;
    const v2 = (await registry.get('v2'))?.state;
    if (expect.retired) {
      const stale = await this.stale();
      if (stale > 0) notes.push(`${stale} DEK(s) still on v1`);
      losses += stale;
      if (v1 !== 'retired') notes.push(`v1 is ${v1}, not retired`);
    } else if (v1 === 'retired' || v2 === 'retired') {
      losses++;
      notes.push('a KEK was retired after an abort');
    }
    const checked = this.before.size - (expect.except !== undefined && this.before.has(expect.except) ? 1 : 0);
    return { losses, checked, notes };
  }

  async stop(): Promise<void> {
    await this.worker?.kill('SIGKILL');
    await this.closeClient?.();
    await this.database?.drop();
    await this.server?.stop();
    this.keys.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

type Scenario = (
  world: World,
  options: Options,
) => Promise<{ faults: string; retired: boolean; except?: string; note?: string }>;

const SCENARIOS: Record<string, Scenario> = {
  async 'worker-kill'(world, options) {
    const started = await world.rotate();
    let kills = 0;
    for (let k = 1; k <= options.kills; k++) {
      await world.waitForRewrapped(Math.min(0.9, k / (options.kills + 1)));
      if ((await world.stale()) === 0) break;
      await world.worker.kill('SIGKILL');
      kills++;
      await sleep(200);
      world.startWorker();
    }
    await started.handle.result();
    return { faults: `${kills} × SIGKILL of the worker`, retired: true };
  },

  async 'postgres-restart'(world, options) {
    if (process.env.DATABASE_URL)
      return { faults: 'skipped: DATABASE_URL points at a server this suite does not own', retired: false };
    if (!options.postgresRestart) return { faults: 'skipped: --no-postgres-restart', retired: false };
    const started = await world.rotate();
    await world.waitForRewrapped(0.3);
    // The setup script is plain ESM beside the sources (it runs before anything is built).
    const setup = (await import(
      path.join(projectRoot, 'scripts', 'setup.mjs')
    )) as typeof import('../scripts/setup.mjs');
    setup.restartPostgres();
    await started.handle.result();
    return { faults: '1 × PostgreSQL immediate restart', retired: true };
  },

  async 'temporal-restart'(world) {
    const started = await world.rotate();
    await world.waitForRewrapped(0.3);
    await world.restartServer();
    await started.handle.result();
    return { faults: '1 × dev server restart (on-disk history)', retired: true };
  },

  async 'live-writers'(world) {
    const app = new TenantCrypto({ db: world.db, keys: world.keys, registryTtlMs: 300, instanceId: 'chaos-app' });
    await app.start();
    let writes = 0;
    let created = 0;
    let running = true;
    const writer = (async () => {
      while (running) {
        await app.rewriteDek(tenantIdFor('tenant-', Math.floor(Math.random() * world.tenants)));
        writes++;
        if (writes % 10 === 0) await app.encrypt(`new-${created++}`, 'fresh');
      }
    })();
    try {
      const started = await world.rotate({ ...ROTATION, fleetLiveWithin: '10s' });
      await started.handle.result();
    } finally {
      running = false;
      await writer;
      await app.stop();
    }
    return { faults: `${writes} DEK writes, ${created} new tenants by a live writer`, retired: true };
  },

  async 'pause-resume'(world) {
    const started = await world.rotate();
    await world.waitForRewrapped(0.3);
    await started.handle.executeUpdate(pauseUpdate);
    await sleep(2_000); // running slices stop at their next batch boundary
    const held = await world.stale();
    await sleep(3_000);
    const moved = held !== (await world.stale());
    await started.handle.signal(resumeSignal);
    await started.handle.result();
    return {
      faults: '1 × pause of 5 s, then resume',
      retired: true,
      note: moved ? 'rewrap moved while paused' : undefined,
    };
  },

  async 'abort-restart'(world) {
    const first = await world.rotate();
    await world.waitForRewrapped(0.3);
    await first.handle.signal(abortSignal, 'chaos');
    const aborted = await first.handle.result();
    const midway = await world.losses({ retired: false });
    if (aborted.outcome !== 'aborted' || midway.losses > 0) {
      return {
        faults: '1 × abort',
        retired: false,
        note: `after the abort: ${aborted.outcome}, ${midway.losses} lost`,
      };
    }
    const second = await world.rotate();
    await second.handle.result();
    return { faults: '1 × abort mid-rewrap, then start again', retired: true };
  },

  // The faults the issue "Safety" implies: a worker killed while its rotation is paused, an application writer whose
  // idea of the current KEK is stale across the retirement, and a second worker holding another key under 'v2'.
  async 'killed-while-paused'(world) {
    const started = await world.rotate();
    await world.waitForRewrapped(0.3);
    await started.handle.executeUpdate(pauseUpdate);
    await sleep(2_000); // running slices stop at their next batch boundary
    await world.worker.kill('SIGKILL');
    const held = await world.stale();
    await sleep(3_000);
    world.startWorker();
    await sleep(3_000);
    const moved = held !== (await world.stale());
    await started.handle.executeUpdate(resumeUpdate);
    await started.handle.result();
    return {
      faults: '1 × SIGKILL of the worker while paused, a new worker, then resume',
      retired: true,
      note: moved ? 'rewrap moved while paused' : undefined,
    };
  },

  async 'writer-stalled-across-retire'(world) {
    // This instance read "current = v1" and then stalled for the whole rotation (its registry TTL is an hour).
    const stalled = new TenantCrypto({
      db: world.db,
      keys: world.keys,
      registryTtlMs: 3_600_000,
      instanceId: 'chaos-stalled',
      warn: () => undefined,
    });
    await stalled.start();
    try {
      const started = await world.rotate({ ...ROTATION, fleetLiveWithin: '1s' });
      await sleep(1_500); // the stalled instance stops announcing: it is not live, and does not hold the gate
      await started.handle.result();
      // After v1's retirement the stalled request goes on: a new tenant, and a rewrite of an existing DEK.
      const ciphertext = await stalled.encrypt('stalled-newcomer', 'data of stalled-newcomer');
      await stalled.rewriteDek(tenantIdFor('tenant-', 3));
      world.data.set('stalled-newcomer', ciphertext);
      const row = await new TenantDekStore(world.db).find('stalled-newcomer');
      const onV1 = await world.stale();
      return {
        faults: '1 writer stale across the retirement: 1 new tenant, 1 DEK rewrite after v1 was retired',
        retired: true,
        note:
          row?.kekId !== 'v2' || onV1 > 0
            ? `the late writes went under ${row?.kekId ?? 'nothing'} (${onV1} on the retired v1)`
            : undefined,
      };
    } finally {
      await stalled.stop();
    }
  },

  async 'wrong-key-worker'(world) {
    // A second worker on the task queue with the right 'v1' and another key under 'v2' (a second openssl rand). It
    // joins once the right worker has registered 'v2' (before that, whichever worker provisions 'v2' first defines
    // it: see the README) and the rewrap is under way; then the right worker dies, so the slices go to it.
    const impostorEnv = { ...world.keyEnv, REKEY_KEK_v2: randomBytes(32).toString('base64url') };
    const first = await world.rotate();
    await world.waitForRewrapped(0.1);
    const impostor = spawnWorker({ databaseUrl: world.databaseUrl, address: world.address, keyEnv: impostorEnv });
    try {
      await world.worker.kill('SIGKILL');
      const outcome = await first.handle.result().then(
        (report) => `completed (${report.outcome})`,
        (err: unknown) => failureMessage(err),
      );
      const named = outcome.includes((await storedKek(world.keys, 'v2')).fingerprint);
      const midway = await world.losses({ retired: false });
      if (!named || midway.losses > 0) {
        return {
          faults: '1 worker with another key under v2',
          retired: false,
          note: `the impostor's run ended: ${outcome}; ${midway.losses} lost`,
        };
      }
    } finally {
      await impostor.kill('SIGTERM'); // the operator removes it: it withdraws from the fleet
    }
    // The right worker again: the same rotation, started anew, finishes what the impostor refused to touch.
    world.startWorker();
    const second = await world.rotate();
    await second.handle.result();
    return {
      faults: '1 worker with another key under v2 took the slices: refused by fingerprint, run failed; restarted',
      retired: true,
    };
  },

  async 'bad-input'(world) {
    const refusals: string[] = [];
    const cli = await new Promise<number>((resolve) =>
      execFile(
        process.execPath,
        [path.join(projectRoot, 'dist/src/starter.js'), 'rotate', '--from', 'v1', '--to', 'v2', '--batch-size', '0'],
        (err) => resolve(err ? Number(err.code) : 0),
      ),
    );
    if (cli === 2) refusals.push('CLI flag');
    const api = await buildAdminServer({
      client: world.client,
      targets: new TargetRuntimes({ db: world.db, keys: world.keys }),
      defaultTarget: 'rekey',
      taskQueue: TASK_QUEUE,
      token: 'chaos-token-0123456789',
      configuredCurrentKekId: () => undefined,
    });
    const http = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: { authorization: 'Bearer chaos-token-0123456789', 'content-type': 'application/json' },
      payload: '{"batch_size": "lots"',
    });
    await api.close();
    if (http.statusCode === 400) refusals.push('HTTP body');
    try {
      new EnvKeyProvider({ REKEY_KEK_v9: 'not-a-key' }).close();
    } catch {
      refusals.push('env key');
    }
    // A tampered wrapped DEK: reported, never rewritten; the run fails naming it and retires nothing.
    const victim = tenantIdFor('tenant-', 7);
    await world.db.query(
      `UPDATE rekey.tenant_deks SET wrapped_dek = set_byte(wrapped_dek, 30, get_byte(wrapped_dek, 30) # 1) WHERE tenant_id = $1`,
      [victim],
    );
    const tampered = (await new TenantDekStore(world.db).find(victim))!;
    const started = await world.rotate({ ...ROTATION, maxPasses: 2 });
    const failure = await started.handle.result().then(
      () => 'completed',
      (err: unknown) => failureMessage(err),
    );
    const after = (await new TenantDekStore(world.db).find(victim))!;
    if (
      failure.includes(victim) &&
      after.wrappedDek.equals(tampered.wrappedDek) &&
      after.version === tampered.version
    ) {
      refusals.push('tampered DEK');
    }
    return {
      faults: `4 bad inputs: ${refusals.length} refused clearly (${refusals.join(', ')})`,
      retired: false,
      except: victim,
      note: refusals.length === 4 ? undefined : 'a bad input was not refused',
    };
  },
};

/**
 * The scenarios of other keyspaces (bench/chaos-targets.ts): each builds its own world and is checked by fixture code
 * that shares nothing with rekey's codecs.
 */
const TARGET_SCENARIOS: Record<string, (options: Options) => Promise<TargetVerdict>> = {
  mycelium: myceliumScenario,
  talos: talosScenario,
  kms: kmsScenario,
};

function parseOptions(argv: string[]): Options {
  const value = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const known = [...Object.keys(SCENARIOS), ...Object.keys(TARGET_SCENARIOS)];
  const scenarios = value('--scenarios')?.split(',') ?? known;
  for (const s of scenarios)
    if (!known.includes(s)) throw new Error(`unknown scenario '${s}': choose from ${known.join(', ')}`);
  return {
    tenants: Number(value('--tenants') ?? 20_000),
    scenarios,
    kills: Number(value('--kills') ?? 3),
    postgresRestart: !argv.includes('--no-postgres-restart'),
  };
}

function withinTimeout<T>(work: Promise<T>): Promise<T> {
  return Promise.race([
    work,
    new Promise<never>((_, reject) => {
      // unref: a scenario that finished must not keep the process waiting for this timer
      setTimeout(
        () => reject(new Error(`did not finish within ${SCENARIO_TIMEOUT_MS / 1000} s`)),
        SCENARIO_TIMEOUT_MS,
      ).unref();
    }),
  ]);
}

async function runTargetScenario(
  name: string,
  scenario: (options: Options) => Promise<TargetVerdict>,
  options: Options,
): Promise<Row> {
  const started = Date.now();
  try {
    const verdict = await withinTimeout(scenario(options));
    const seconds = `${((Date.now() - started) / 1000).toFixed(0)} s`;
    return {
      scenario: name,
      faults: verdict.faults,
      tenantsChecked: verdict.checked,
      losses: verdict.losses,
      note: [seconds, ...verdict.notes].join('; '),
    };
  } catch (err) {
    return { scenario: name, faults: 'scenario failed', tenantsChecked: 0, losses: 1, note: failureMessage(err) };
  }
}

const RESULTS = path.join(projectRoot, 'bench', 'results', 'chaos.md');
const HEADER = ['| scenario | faults injected | tenants checked | losses |', '|---|---|---|---|'];

/**
 * Writes bench/results/chaos.md. A run of some scenarios replaces their rows and keeps the others with the lines
 * saying which runs they come from, so that each row keeps the command, date and commit it was measured with.
 */
function writeResults(rows: Row[], table: string[], footer: string, subset: boolean): void {
  const kept: string[] = [];
  const provenances: string[] = [];
  if (subset && fs.existsSync(RESULTS)) {
    const ran = new Set(rows.map((r) => r.scenario));
    for (const line of fs.readFileSync(RESULTS, 'utf8').split('\n')) {
      const scenario = /^\| ([a-z-]+) \|/.exec(line)?.[1];
      if (scenario && scenario !== 'scenario' && !ran.has(scenario)) kept.push(line);
      if (line.startsWith('Command: ')) provenances.push(line);
    }
  }
  fs.writeFileSync(RESULTS, `${[...HEADER, ...kept, ...table, '', ...provenances, footer].join('\n')}\n`);
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const rows: Row[] = [];
  for (const name of options.scenarios) {
    if (TARGET_SCENARIOS[name]) {
      rows.push(await runTargetScenario(name, TARGET_SCENARIOS[name], options));
      process.stdout.write(`${name}: done\n`);
      continue;
    }
    const world = new World(options.tenants);
    const started = Date.now();
    try {
      await world.start();
      const outcome = await withinTimeout(SCENARIOS[name]!(world, options));
      const verdict = await world.losses({ retired: outcome.retired, except: outcome.except });
      const notes = [outcome.note, ...verdict.notes].filter((n): n is string => Boolean(n));
      rows.push({
        scenario: name,
        faults: outcome.faults,
        tenantsChecked: verdict.checked,
        losses: verdict.losses + (outcome.note ? 1 : 0),
        note: `${((Date.now() - started) / 1000).toFixed(0)} s${notes.length ? `; ${notes.join('; ')}` : ''}`,
      });
    } catch (err) {
      rows.push({ scenario: name, faults: 'scenario failed', tenantsChecked: 0, losses: 1, note: failureMessage(err) });
    } finally {
      await world.stop();
    }
    process.stdout.write(`${name}: done\n`);
  }
  const table = rows.map(
    (r) => `| ${r.scenario} | ${r.faults} | ${r.tenantsChecked.toLocaleString('en-US')} | ${r.losses} (${r.note}) |`,
  );
  const command = `npm run chaos -- ${process.argv.slice(2).join(' ')}`;
  const subset = options.scenarios.length < Object.keys(SCENARIOS).length + Object.keys(TARGET_SCENARIOS).length;
  const footer = provenance(command, subset ? `; rows ${options.scenarios.join(', ')}` : '');
  process.stdout.write(`\n${[...HEADER, ...table, '', footer].join('\n')}\n`);
  if (process.argv.includes('--write')) writeResults(rows, table, footer, subset);
  const lost = rows.reduce((sum, r) => sum + r.losses, 0);
  process.exitCode = lost === 0 ? 0 : 1;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
