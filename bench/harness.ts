// What the benchmark and the chaos suite share: a dev server, a fresh database, env keys, worker processes.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client as TemporalClient, Connection } from '@temporalio/client';
import { Client, Pool } from 'pg';
import { createDatabase, type ScratchDatabase } from '../src/dev/databases';
import { startDevServer, type DevServer } from '../src/dev/dev-server';
import { readToolchain, type Toolchain } from '../src/dev/toolchain';
import { wrapDek } from '../src/envelope/dek-wrapping';
import { EnvKeyProvider } from '../src/keyring/drivers/env';
import { WORKER_TUNING } from '../src/env-vars';
import { projectRoot } from '../src/project-paths';

export const TASK_QUEUE = 'rekey-harness';

/**
 * A dev server on ports it is started on and, if one is taken, started again on others (`startDevServer`). A given
 * port (a restart of the same server, whose workers keep its address) is kept: it is outside the ephemeral range, so
 * only another program that names ports itself could have taken it meanwhile, and then the start fails saying so.
 */
export function startServer(toolchain: Toolchain, dbFilename?: string, port?: number): Promise<DevServer> {
  return startDevServer({ temporalCli: toolchain.temporalCli, port, dbFilename });
}

/**
 * A new database named `<prefix>_<random>`: two runs of a script (or a run and a test) beside one PostgreSQL never
 * drop each other's database, as one fixed name would (createDatabase replaces a database of its name).
 */
export function freshDatabase(
  prefix: string,
  options: { migrate?: boolean; poolSize?: number } = {},
): Promise<ScratchDatabase> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  return createDatabase(adminUrl(), name, options.poolSize ?? 10, { migrate: options.migrate });
}

function adminUrl(): string {
  return process.env.DATABASE_URL ?? readToolchain().databaseUrl;
}

async function asAdmin<T>(run: (admin: Client) => Promise<T>): Promise<T> {
  const admin = new Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    return await run(admin);
  } finally {
    await admin.end();
  }
}

/**
 * Byte-identical copies of a seeded database (CREATE DATABASE … TEMPLATE, file by file): the same rows on the same
 * pages, the same indexes, trigger and registry, the same visibility hints. Copying needs the source to have no
 * session: its pool's connections are ended first (the pool opens new ones when next used), so copy before a worker
 * connects to it.
 */
export async function cloneDatabase(
  source: ScratchDatabase,
  names: string[],
  poolSize = 10,
): Promise<ScratchDatabase[]> {
  const sourceName = new URL(source.url).pathname.slice(1);
  const clones: ScratchDatabase[] = [];
  await asAdmin(async (admin) => {
    for (const name of names) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`'${name}' is not a plain database name`);
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      for (let attempt = 1; ; attempt++) {
        await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [sourceName]);
        try {
          await admin.query(`CREATE DATABASE ${name} TEMPLATE ${sourceName} STRATEGY FILE_COPY`);
          break;
        } catch (err) {
          // 55006: a session reached the source between the two statements.
          if ((err as { code?: string }).code !== '55006' || attempt >= 5) throw err;
        }
      }
      const url = new URL(source.url);
      url.pathname = `/${name}`;
      const pool = new Pool({ connectionString: url.toString(), max: poolSize });
      pool.on('error', () => undefined);
      clones.push({
        url: url.toString(),
        pool,
        async drop() {
          await pool.end();
          await asAdmin((a) => a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
        },
      });
    }
  });
  return clones;
}

/** Vacuums and checkpoints, so that a measured run does not pay for the writes of the one before it. */
export async function settle(db: Pool): Promise<void> {
  await db.query('VACUUM ANALYZE');
  await db.query('CHECKPOINT').catch(() => undefined); // needs a superuser (the local cluster's postgres is one)
}

/**
 * The database's floor for a rewrap of rekey's own table: the same UPDATE a rewrap makes of every row (the label, the
 * wrapped DEK, the version, through the same indexes and trigger), with no crypto and no round trips, split over
 * `statements` concurrent statements on disjoint id ranges of about equal size (1: one statement, which PostgreSQL
 * runs on one core). `to` must be a KEK the registry lets wrap. Wall seconds, and the CPU each process spent.
 */
export async function databaseFloor(
  db: Pool,
  to: string,
  statements: number,
  meter: CpuMeter,
): Promise<ReturnType<CpuMeter['end']>> {
  const fractions = Array.from({ length: statements - 1 }, (_, i) => (i + 1) / statements);
  const { rows } = await db.query<{ boundaries: string[] | null }>(
    `SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY tenant_id)::text[] AS boundaries
     FROM rekey.tenant_deks`,
    [fractions],
  );
  const bounds: (string | null)[] = ['', ...(statements > 1 ? (rows[0]?.boundaries ?? []) : []), null];
  // Each statement on its own connection, opened before the clock starts.
  const clients = await Promise.all(bounds.slice(1).map(() => db.connect()));
  try {
    meter.begin();
    await Promise.all(
      clients.map((client, i) =>
        client.query(
          `UPDATE rekey.tenant_deks SET kek_id = $1, wrapped_dek = wrapped_dek, version = version + 1
           WHERE tenant_id > $2 AND ($3::text IS NULL OR tenant_id <= $3)`,
          [to, bounds[i], bounds[i + 1]],
        ),
      ),
    );
    return meter.end();
  } finally {
    for (const client of clients) client.release();
  }
}

/** Random KEKs as the env provider reads them; the same variables go to every worker process. */
export function envKeys(ids: string[], current: string): { env: Record<string, string>; provider: EnvKeyProvider } {
  const env: Record<string, string> = { REKEY_CURRENT_KEK_ID: current };
  for (const id of ids) env[`REKEY_KEK_${id}`] = randomBytes(32).toString('base64url');
  return { env, provider: new EnvKeyProvider(env) };
}

export interface WorkerProcess {
  child: ChildProcess;
  /** True if the process ended without being asked to (a crash). */
  crashed(): boolean;
  /** Peak resident set size so far (VmHWM), in MiB. */
  peakRssMiB(): number;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** The real worker (`dist/src/worker.js`) in its own process, so it can be killed and measured. */
export function spawnWorker(options: {
  databaseUrl: string;
  address: string;
  keyEnv: Record<string, string>;
}): WorkerProcess {
  const log = fs.openSync(path.join(projectRoot, 'bench', 'results', 'worker.log.tmp'), 'a');
  // BENCH_CPU_PROF=<dir>: the worker writes a V8 CPU profile of each of its threads there when it exits.
  const profile = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  // BENCH_PERF_MAP=1: the worker writes /tmp/perf-<pid>.map, so that Linux perf (which samples CPU, not wall time)
  // names its JavaScript functions.
  if (process.env.BENCH_PERF_MAP === '1') profile.push('--perf-basic-prof');
  // BENCH_NODE_FLAGS: more of node's own flags for the worker (--trace-deopt, --trace-gc, …), split on spaces.
  if (process.env.BENCH_NODE_FLAGS) profile.push(...process.env.BENCH_NODE_FLAGS.split(' ').filter(Boolean));
  const child = spawn(process.execPath, [...profile, path.join(projectRoot, 'dist', 'src', 'worker.js')], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: options.databaseUrl,
      TEMPORAL_ADDRESS: options.address,
      REKEY_TASK_QUEUE: TASK_QUEUE,
      REKEY_KEY_PROVIDER: 'env',
      REKEY_METRICS_PORT: '0',
      REKEY_TEMPORAL_METRICS_PORT: '0',
      LOG_LEVEL: 'warn',
      // What the benchmark compares: every setting of how much or how fast the worker reads (src/env-vars.ts,
      // WORKER_TUNING: crypto backend and threads, activities at once, rates, …), as the caller's environment gives it.
      ...Object.fromEntries(
        WORKER_TUNING.filter((name) => process.env[name] !== undefined).map((name) => [name, process.env[name]!]),
      ),
      ...options.keyEnv,
    },
    stdio: ['ignore', log, log],
  });
  let peak = 0;
  let asked = false;
  const sample = setInterval(() => {
    try {
      const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
      peak = Math.max(peak, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024);
    } catch {
      // exited
    }
  }, 200);
  child.once('exit', () => clearInterval(sample));
  return {
    child,
    crashed: () => !asked && (child.exitCode !== null || child.signalCode !== null),
    peakRssMiB: () => Math.round(peak),
    async kill(signal = 'SIGTERM') {
      asked = true;
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill(signal);
      await exited;
    },
  };
}

export async function temporalClient(address: string): Promise<{ client: TemporalClient; close: () => Promise<void> }> {
  const connection = await Connection.connect({ address });
  return { client: new TemporalClient({ connection }), close: () => connection.close() };
}

/**
 * Where a bench writes its results: the path after `--out` on its command line, else bench/out/<name>, a directory git
 * ignores, so that a run never overwrites the committed bench/results files (those are copied there by hand, with the
 * run's provenance, when a run is kept). Made if missing; the path is printed.
 */
/** The bench's positional arguments (those not an option, nor the path after `--out`). */
export function positionalArgs(): string[] {
  const args = process.argv.slice(2);
  return args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--out');
}

export function writeResults(name: string, text: string): string {
  const at = process.argv.indexOf('--out');
  const file =
    at >= 0 && process.argv[at + 1]
      ? path.resolve(process.argv[at + 1]!)
      : path.join(projectRoot, 'bench', 'out', name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
  process.stdout.write(`results written to ${file}\n`);
  return file;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until a process has settled: under 5% of a core over a second (a worker that has started, connected and
 * polls), so that what it spends starting is not counted in a measurement taken beside it. Fails after `timeoutMs`.
 */
export async function untilIdle(pid: number | undefined, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const before = processCpuSeconds(pid);
    await sleep(1000);
    if (processCpuSeconds(pid) - before < 0.05) return;
    if (Date.now() > deadline) throw new Error(`process ${pid} did not settle within ${timeoutMs} ms`);
  }
}

export function gitCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: projectRoot, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

/**
 * The line every result file ends with: the command, the date, the commit, the cores (and a fingerprint of their
 * model, so that runs on one machine can be told apart), and anything the run adds.
 */
export function provenance(command: string, extra = ''): string {
  const cpus = os.cpus();
  const fingerprint = createHash('sha256')
    .update(cpus.map((c) => c.model).join())
    .digest('hex')
    .slice(0, 8);
  return `Command: \`${command}\`; ${new Date().toISOString().slice(0, 10)}, commit ${gitCommit()}, ${cpus.length} cores (${cpus[0]?.model ?? '?'} #${fingerprint}), PostgreSQL with fsync on${extra}.`;
}

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on every Linux this runs on). */
const TICKS = 100;

/** CPU seconds (user + system) a process has used, its threads included; 0 once it has gone. */
export function processCpuSeconds(pid: number | undefined, withReapedChildren = false): number {
  if (pid === undefined) return 0;
  try {
    // The command name may hold spaces: the fields counted from after its closing parenthesis.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i]));
    return (utime! + stime! + (withReapedChildren ? cutime! + cstime! : 0)) / TICKS;
  } catch {
    return 0;
  }
}

/** CPU seconds used so far by one thread of this process (its main thread: the process's id). */
export function threadCpuSeconds(tid: number = process.pid): number {
  try {
    const stat = fs.readFileSync(`/proc/${process.pid}/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS;
  } catch {
    return 0;
  }
}

/**
 * CPU seconds used by the PostgreSQL server so far: every live `postgres` process, and the postmaster's reaped
 * children (a backend that has exited counts there). Differences between two readings are what the server spent.
 */
export function postgresCpuSeconds(): number {
  let total = 0;
  for (const { pid, ppid } of postgresProcesses()) {
    const postmaster = fs.existsSync(`/proc/${ppid}/comm`)
      ? fs.readFileSync(`/proc/${ppid}/comm`, 'utf8').trim() !== 'postgres'
      : true;
    total += processCpuSeconds(pid, postmaster);
  }
  return total;
}

function postgresProcesses(): { pid: number; ppid: number; title: string[] }[] {
  const found: { pid: number; ppid: number; title: string[] }[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== 'postgres') continue;
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      // "postgres: <user> <database> <host(port)> <state>", or "postgres: autovacuum worker <database>".
      const title = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ').trim().split(/\s+/);
      found.push({ pid: Number(entry), ppid, title });
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

/**
 * CPU seconds spent by PostgreSQL's backends (and autovacuum workers, unless `autovacuum` is false) for the given
 * databases, told by their process titles: what a run's own connections cost, without the other databases of a
 * shared cluster (nor the checkpointer and the WAL writer, which no database owns). A backend's CPU is read every
 * 250 ms while the counter is open and kept when the backend exits (a pool closes idle connections), so readings only
 * grow; what a backend spends after its last reading is lost.
 */
export class DatabaseCpu {
  private readonly last = new Map<number, number>();
  private retired = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly databases: readonly string[],
    private readonly autovacuum = true,
  ) {
    this.read();
    this.timer = setInterval(() => this.read(), 250).unref();
  }

  read(): number {
    const seen = new Set<number>();
    for (const { pid, title } of postgresProcesses()) {
      const vacuum = title[1] === 'autovacuum';
      const database = vacuum ? title[3] : title[2];
      if (database === undefined || !this.databases.includes(database) || (vacuum && !this.autovacuum)) continue;
      seen.add(pid);
      this.last.set(pid, Math.max(this.last.get(pid) ?? 0, processCpuSeconds(pid)));
    }
    for (const [pid, seconds] of this.last) {
      if (seen.has(pid)) continue;
      this.retired += seconds;
      this.last.delete(pid);
    }
    let total = this.retired;
    for (const seconds of this.last.values()) total += seconds;
    return total;
  }

  close(): void {
    clearInterval(this.timer);
  }
}

/** What each process of a benchmark spent between two moments, and the machine's whole capacity over the time. */
export class CpuMeter {
  private start: Record<string, number> = {};
  private startedAt = 0;

  constructor(private readonly sources: Record<string, () => number>) {}

  begin(): void {
    this.startedAt = Date.now();
    this.start = Object.fromEntries(Object.entries(this.sources).map(([name, read]) => [name, read()]));
  }

  end(): { seconds: number; cpu: Record<string, number> } {
    const cpu = Object.fromEntries(
      Object.entries(this.sources).map(([name, read]) => [name, read() - (this.start[name] ?? 0)]),
    );
    return { seconds: (Date.now() - this.startedAt) / 1000, cpu };
  }
}

/**
 * `count` rows of rekey's own table in memory, as the engine reads them, in batches of 2,000, each DEK wrapped under
 * `from` (the crypto benchmarks' input).
 */
export function inMemoryBatches(
  count: number,
  from: { kekId: string; key: Buffer },
): { $id: string; $label: string; tenant_id: string; wrapped_dek: Buffer }[][] {
  const batch = 2_000;
  return Array.from({ length: Math.ceil(count / batch) }, (_, b) =>
    Array.from({ length: Math.min(batch, count - b * batch) }, (_, i) => {
      const id = `tenant-${String(b * batch + i).padStart(8, '0')}`;
      return {
        $id: id,
        $label: from.kekId,
        tenant_id: id,
        wrapped_dek: wrapDek(from.key, from.kekId, id, randomBytes(32)),
      };
    }),
  );
}
