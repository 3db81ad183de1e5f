// What the benchmark and the chaos suite share: a dev server, a fresh database, env keys, worker processes.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client as TemporalClient, Connection } from '@temporalio/client';
import { createDatabase, type ScratchDatabase } from '../src/dev/databases';
import { startDevServer, type DevServer } from '../src/dev/dev-server';
import { readToolchain, type Toolchain } from '../src/dev/toolchain';
import { wrapDek } from '../src/envelope/dek-wrapping';
import { EnvKeyProvider } from '../src/keys/env-provider';
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
export function freshDatabase(prefix: string, options: { migrate?: boolean } = {}): Promise<ScratchDatabase> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  return createDatabase(process.env.DATABASE_URL ?? readToolchain().databaseUrl, name, 10, options);
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
  const child = spawn(process.execPath, [path.join(projectRoot, 'dist', 'src', 'worker.js')], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: options.databaseUrl,
      TEMPORAL_ADDRESS: options.address,
      REKEY_TASK_QUEUE: TASK_QUEUE,
      REKEY_KEY_PROVIDER: 'env',
      REKEY_METRICS_PORT: '0',
      REKEY_TEMPORAL_METRICS_PORT: '0',
      LOG_LEVEL: 'warn',
      // What the benchmark compares: the crypto backend and threads, as the caller's environment gives them.
      ...Object.fromEntries(
        ['REKEY_AES_GCM', 'REKEY_CRYPTO_THREADS', 'REKEY_AES_GCM_ADDON']
          .filter((name) => process.env[name] !== undefined)
          .map((name) => [name, process.env[name]!]),
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

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

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

/**
 * CPU seconds used by the PostgreSQL server so far: every live `postgres` process, and the postmaster's reaped
 * children (a backend that has exited counts there). Differences between two readings are what the server spent.
 */
export function postgresCpuSeconds(): number {
  let total = 0;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let comm: string;
    let ppid: string;
    try {
      comm = fs.readFileSync(`/proc/${entry}/comm`, 'utf8').trim();
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      ppid = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]!;
    } catch {
      continue;
    }
    if (comm !== 'postgres') continue;
    const postmaster = fs.existsSync(`/proc/${ppid}/comm`)
      ? fs.readFileSync(`/proc/${ppid}/comm`, 'utf8').trim() !== 'postgres'
      : true;
    total += processCpuSeconds(Number(entry), postmaster);
  }
  return total;
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
