// A PostgreSQL cluster of a test's own, made with initdb from the server binaries the setup found, listening on a Unix
// socket in its own directory only (no TCP port to pick): for the tests that stop the server, put a data directory
// taken earlier back in place and start it again (a file-level restore), which the shared cluster must never see.
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';

/** The directory holding initdb and pg_ctl: REKEY_PG_BIN, else Debian's newest, else initdb's on PATH. */
function serverBin(): string {
  const given = process.env.REKEY_PG_BIN;
  if (given !== undefined && fs.existsSync(path.join(given, 'initdb'))) return given;
  const debian = '/usr/lib/postgresql';
  if (fs.existsSync(debian)) {
    const newest = fs
      .readdirSync(debian)
      .filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(debian, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a))[0];
    if (newest !== undefined) return path.join(debian, newest, 'bin');
  }
  const found = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' }).stdout.trim();
  if (found === '')
    throw new Error('PostgreSQL server binaries not found (set REKEY_PG_BIN to the directory of initdb)');
  return path.dirname(found);
}

const root = process.getuid?.() === 0;
const owner = process.env.REKEY_PG_USER || 'postgres';

/** Runs a server binary as the cluster's owner (initdb and postgres refuse root), failing with its stderr. */
function runAsOwner(command: string, args: string[]): void {
  const [file, argv] = root ? ['runuser', ['-u', owner, '--', command, ...args]] : [command, args];
  const result = spawnSync(file, argv, { cwd: '/', encoding: 'utf8', timeout: 120_000 });
  if (result.status !== 0) {
    throw new Error(`${path.basename(command)} ${args.join(' ')} failed: ${result.stderr || result.error?.message}`);
  }
}

/**
 * The same, without blocking the event loop: while the server stops, the pools' idle connections read its goodbye and
 * leave their pool, instead of being handed out dead after the start.
 */
async function runAsOwnerAsync(command: string, args: string[]): Promise<void> {
  const [file, argv] = root ? ['runuser', ['-u', owner, '--', command, ...args]] : [command, args];
  await promisify(execFile)(file, argv, { cwd: '/', timeout: 120_000 });
}

async function copyTree(from: string, to: string): Promise<void> {
  fs.rmSync(to, { recursive: true, force: true });
  await promisify(execFile)('cp', ['-a', from, to]);
}

export interface OwnCluster {
  /** The superuser's connection string to database postgres, over the cluster's Unix socket. */
  readonly url: string;
  /** Stops the server cleanly, copies its data directory aside, starts it again (a file-level backup). */
  takeCopy(): Promise<void>;
  /** Stops the server, puts the copy back in place of its data directory and starts it (same system, timeline). */
  restoreCopy(): Promise<void>;
}

/** One cluster of its own for the calling test file, stopped and removed after its last test. */
export function useOwnCluster(): OwnCluster {
  const bin = serverBin();
  let dir: string | undefined;
  const paths = () => {
    if (dir === undefined) throw new Error('the test cluster is only available inside tests');
    return { data: path.join(dir, 'data'), copy: path.join(dir, 'copy'), socket: path.join(dir, 'socket') };
  };
  const pgCtl = (...args: string[]) => {
    const { data } = paths();
    runAsOwner(path.join(bin, 'pg_ctl'), ['-D', data, '-l', path.join(dir!, 'server.log'), '-w', '-t', '60', ...args]);
  };
  const pgCtlAsync = (...args: string[]) =>
    runAsOwnerAsync(path.join(bin, 'pg_ctl'), [
      '-D',
      paths().data,
      '-l',
      path.join(dir!, 'server.log'),
      '-w',
      '-t',
      '60',
      ...args,
    ]);
  /** Stops the server (the pools' idle connections see it go meanwhile), runs `between`, starts it. */
  const restart = async (between: () => Promise<void>) => {
    await pgCtlAsync('-m', 'fast', 'stop');
    await between();
    await pgCtlAsync('start');
  };
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-own-cluster-'));
    fs.chmodSync(dir, 0o755);
    const { data, socket } = paths();
    fs.mkdirSync(data, { mode: 0o700 });
    fs.mkdirSync(socket, { mode: 0o755 });
    if (root) {
      const chown = spawnSync('chown', [`${owner}:`, data, socket, dir], { encoding: 'utf8' });
      if (chown.status !== 0) throw new Error(`chown to ${owner} failed: ${chown.stderr}`);
    }
    runAsOwner(path.join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '--no-instructions']);
    fs.appendFileSync(
      path.join(data, 'postgresql.conf'),
      `\nlisten_addresses = ''\nunix_socket_directories = '${socket}'\nport = 5432\nmax_connections = 40\nshared_buffers = 16MB\nfsync = off\n`,
    );
    pgCtl('start');
  }, 180_000);
  afterAll(() => {
    if (dir === undefined) return;
    try {
      pgCtl('-m', 'immediate', 'stop');
    } catch {
      // already stopped by a failed restore: nothing to stop
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    get url() {
      return `postgres://postgres@localhost/postgres?host=${encodeURIComponent(paths().socket)}`;
    },
    async takeCopy() {
      const { data, copy } = paths();
      await restart(() => copyTree(data, copy));
    },
    async restoreCopy() {
      const { data, copy } = paths();
      await restart(() => copyTree(copy, data));
    },
  };
}
