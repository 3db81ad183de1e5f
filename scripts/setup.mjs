#!/usr/bin/env node
// Brings up everything rekey needs, idempotently: npm packages, the `temporal` CLI (dev server with
// Web UI, built from source with Go), the Java time-skipping test server (from Maven Central), a
// local PostgreSQL cluster (unless DATABASE_URL is set), and the tests' other servers and tools (moto,
// HashiCorp Vault and tctl, the last two built from source with Go). Tools are cached outside the clone, keyed by
// version, so every clone on this machine reuses them.
//
// Plain Node with no dependencies on purpose: it runs before `npm ci` has installed anything.
// It writes `.toolchain.json` in the project root; the test harness and the demo read paths from it.

import { spawnSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const TEMPORAL_CLI_VERSION = '1.5.1';
// h1: hash of the module zip, as in Go's checksum database; checked even when that database answers.
export const TEMPORAL_CLI_MODULE_SUM = 'h1:0RZMk14BWxz44Xg6ciDQvpfAMffoG3J7/K03ql80teY=';
export const TEMPORAL_CLI_MIN_GO = [1, 25];
export const TEST_SERVER_VERSION = '1.38.0';
export const DEFAULT_PG_PORT = 54329;

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const manifestPath = path.join(projectRoot, '.toolchain.json');

export class SetupError extends Error {}

const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

export function cacheRoot() {
  if (process.env.REKEY_CACHE_DIR) return path.resolve(process.env.REKEY_CACHE_DIR);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'rekey');
}

function log(message) {
  if (!process.env.REKEY_SETUP_QUIET) process.stderr.write(`setup: ${message}\n`);
}

function which(command) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options });
  if (result.error) throw result.error;
  return result;
}

function lastLines(text, n = 3) {
  return (text || '').trim().split('\n').slice(-n).join(' | ');
}

// ---------------------------------------------------------------- npm packages

export function ensureNodeModules() {
  const installedLock = path.join(projectRoot, 'node_modules', '.package-lock.json');
  const lock = path.join(projectRoot, 'package-lock.json');
  if (fs.existsSync(installedLock) && fs.statSync(installedLock).mtimeMs >= fs.statSync(lock).mtimeMs) return;
  log('installing npm packages (npm ci)');
  const npm = which('npm');
  if (!npm) throw new SetupError('npm not found on PATH: install Node.js 20 with npm (https://nodejs.org)');
  const quiet = { cwd: projectRoot, stdio: ['ignore', 'ignore', 'pipe'] };
  let result = run(npm, ['ci', '--no-audit', '--no-fund'], quiet);
  if (result.status !== 0 && /EUSAGE|in sync/.test(result.stderr)) {
    // A registry mirror that lacks other platforms' optional packages (e.g. @swc/core-darwin-*) yields a
    // lock file that `npm ci` calls out of sync; `npm install` honours the locked versions all the same.
    result = run(npm, ['install', '--no-save', '--no-audit', '--no-fund'], quiet);
  }
  if (result.status !== 0) {
    throw new SetupError(`npm ci failed (is the npm registry reachable?): ${lastLines(result.stderr)}`);
  }
}

// ---------------------------------------------------------------- Go builds: temporal CLI, Vault, tctl

function goVersion(go) {
  const result = run(go, ['env', 'GOVERSION'], { env: { ...process.env, GOTOOLCHAIN: 'local' } });
  const match = /go(\d+)\.(\d+)/.exec(result.stdout || '');
  return match ? [Number(match[1]), Number(match[2])] : undefined;
}

/** Go from the PATH, at least `minimum`; `tool` names what it builds in the one-line refusal. */
function requireGo(tool, minimum) {
  const go = which('go');
  if (!go) {
    throw new SetupError(
      `Go not found on PATH: install Go >= ${minimum.join('.')} (https://go.dev/dl) to build ${tool}`,
    );
  }
  const version = goVersion(go);
  const [wantMajor, wantMinor] = minimum;
  if (!version || version[0] < wantMajor || (version[0] === wantMajor && version[1] < wantMinor)) {
    throw new SetupError(
      `Go ${version ? version.join('.') : '(unknown version)'} is too old: ${tool} needs Go >= ${wantMajor}.${wantMinor}`,
    );
  }
  return go;
}

// Every Go build: no cgo, the local toolchain only (never a downloaded one), no VCS stamping.
const goEnv = () => ({ ...process.env, CGO_ENABLED: '0', GOTOOLCHAIN: 'local', GOFLAGS: '-buildvcs=false' });

function isSumDbFailure(output) {
  // e.g. "verifying go.mod: …: initializing sumdb.Client: … dial tcp …: connection refused"
  return /sumdb|sum\.golang\.org|checksum database|verifying (module|go\.mod)/i.test(output);
}

/** `go mod download -json` reports its failure in the JSON's Error field, not on stderr. */
function downloadError(result) {
  try {
    return JSON.parse(result.stdout).Error || lastLines(result.stderr, 2);
  } catch {
    return lastLines(result.stderr + result.stdout, 2);
  }
}

/**
 * `module@version` into Go's module cache (GOMODCACHE, shared by every clone), checked against its pinned h1: hash,
 * the hash of the module zip as Go's checksum database holds it. Normally that database vouches for the module too;
 * if it does not answer, the module is downloaded without it and the pin alone vouches. Returns its directory in
 * the module cache (read-only) and whether the checksum database answered.
 */
function downloadGoModule(go, module, version, pinnedSum) {
  const download = (env) => run(go, ['mod', 'download', '-json', `${module}@${version}`], { env, cwd: os.tmpdir() });
  let sumDbAnswered = true;
  let fetched = download(goEnv());
  if (fetched.status !== 0 && isSumDbFailure(downloadError(fetched))) {
    sumDbAnswered = false;
    fetched = download({ ...goEnv(), GONOSUMDB: module });
  }
  if (fetched.status !== 0) {
    throw new SetupError(
      `could not download ${module}@${version} (is the Go module proxy reachable? GOPROXY=${process.env.GOPROXY || 'default'}): ${downloadError(fetched)}`,
    );
  }
  const { Sum: sum, Dir: dir } = JSON.parse(fetched.stdout);
  if (sum !== pinnedSum) {
    throw new SetupError(`${module}@${version} has hash ${sum}, expected ${pinnedSum}: refusing to build it`);
  }
  return { dir, sumDbAnswered };
}

/**
 * Builds a main package of a downloaded module as the main module, read-only (`-mod=readonly`): every dependency must
 * match that module's own go.sum and none may be added, so the pinned module hash pins the whole build and Go's
 * checksum database is never asked. The binary is built into a staging directory beside `binary` and renamed into
 * place, so a half-built binary is never cached.
 */
function goBuild(go, { tool, moduleDir, pkg, binary, ldflags = '', modfile }) {
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  const staging = fs.mkdtempSync(`${binary}.build-`);
  try {
    const args = ['build', '-trimpath', '-ldflags', `-s -w ${ldflags}`.trim(), '-o', path.join(staging, 'bin')];
    if (modfile) args.push(`-modfile=${modfile}`);
    const built = run(go, [...args, pkg], {
      env: { ...goEnv(), GOFLAGS: '-buildvcs=false -mod=readonly' },
      cwd: moduleDir,
    });
    if (built.status !== 0) throw new SetupError(`building ${tool} failed: ${lastLines(built.stderr, 3)}`);
    fs.renameSync(path.join(staging, 'bin'), binary);
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  return binary;
}

// ---------------------------------------------------------------- temporal CLI (dev server)

export function ensureTemporalCli() {
  const dir = path.join(cacheRoot(), `temporal-cli-${TEMPORAL_CLI_VERSION}`);
  const binary = path.join(dir, 'temporal');
  if (fs.existsSync(binary)) return binary;

  const go = requireGo(`temporal CLI ${TEMPORAL_CLI_VERSION}`, TEMPORAL_CLI_MIN_GO);
  const module = 'github.com/temporalio/cli';
  const ldflags = `-X ${module}/temporalcli.Version=${TEMPORAL_CLI_VERSION}`;
  const baseEnv = goEnv();
  log(`building temporal CLI ${TEMPORAL_CLI_VERSION} with ${go} (first time only; several minutes)`);
  const downloaded = downloadGoModule(go, module, `v${TEMPORAL_CLI_VERSION}`, TEMPORAL_CLI_MODULE_SUM);
  let sumDbAnswered = downloaded.sumDbAnswered;

  const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-temporal-'));
  let built;
  if (sumDbAnswered) {
    built = run(go, ['install', '-trimpath', '-ldflags', ldflags, `${module}/cmd/temporal@v${TEMPORAL_CLI_VERSION}`], {
      env: { ...baseEnv, GOBIN: staging },
      cwd: os.tmpdir(),
    });
    sumDbAnswered = !(built.status !== 0 && isSumDbFailure(built.stderr));
  }
  if (!sumDbAnswered) {
    log("Go's checksum database did not answer: building against the pinned module's own go.sum instead");
    // Built as the main module, read-only: each dependency must match its go.sum line, none may be added.
    built = run(
      go,
      ['build', '-trimpath', '-ldflags', ldflags, '-o', path.join(staging, 'temporal'), './cmd/temporal'],
      {
        env: { ...baseEnv, GOSUMDB: 'off', GOFLAGS: '-buildvcs=false -mod=readonly' },
        cwd: downloaded.dir,
      },
    );
  }
  if (built.status !== 0) {
    throw new SetupError(`building the temporal CLI failed: ${lastLines(built.stderr, 3)}`);
  }
  fs.mkdirSync(dir, { recursive: true });
  fs.renameSync(path.join(staging, 'temporal'), binary); // atomic: a half-built binary is never cached
  fs.rmSync(staging, { recursive: true, force: true });
  return binary;
}

// ---------------------------------------------------------------- HashiCorp Vault (dev server, for tests)

export const VAULT_VERSION = '1.19.5';
// The tag's commit, for `vault version` (the module zip has no VCS data).
const VAULT_COMMIT = '7010adf2c67686681908f04ec8e9357f19066f4f';
// Vault's go.mod says `go 1.24.0`; with GOTOOLCHAIN=local an older Go refuses it.
export const VAULT_MIN_GO = [1, 24];
// The module, and the five nested modules its go.mod replaces with directories (`./api`, `./sdk`, …) that the
// module zip leaves out, each with its h1: hash. sdk v0.17.0, not the v0.15.2 go.mod requires: the tag's own sdk
// has consts.PluginTierOfficial, which v0.15.2 lacks; v0.17.0 is the first release with it.
const VAULT_MODULE = [
  'github.com/hashicorp/vault',
  `v${VAULT_VERSION}`,
  'h1:19wLqRe9MagoARp1nqayb0erZ4TAgGG6URMA+WoB8J0=',
];
const VAULT_NESTED_MODULES = [
  ['github.com/hashicorp/vault/api', 'v1.16.0', 'h1:nbEYGJiAPGzT9U4oWgaaB0g+Rj8E59QuHKyA5LhwQN4='],
  ['github.com/hashicorp/vault/sdk', 'v0.17.0', 'h1:uqqhFs6omGUtcWg3QejPvIs2a06VfUgkUr5yHdUeTJs='],
  ['github.com/hashicorp/vault/api/auth/approle', 'v0.1.0', 'h1:/LQp+JcqWoG38MIwapG+0Acde9eFVRTFXbict99NB48='],
  ['github.com/hashicorp/vault/api/auth/userpass', 'v0.1.0', 'h1:C6OdAYczMbzd1Pe1LLf2SHDulxOq/iybWV3kbgV/PS4='],
  ['github.com/hashicorp/vault/api/auth/kubernetes', 'v0.6.0', 'h1:K8sKGhtTAqGKfzaaYvUSIOAqTOIn3Gk1EsCEAMzZHtM='],
];

/**
 * HashiCorp Vault, for the tests of the Vault key stores (`vault server -dev`; src/dev/vault.ts starts one). Built
 * from the Go module proxy: `go install` refuses the module because its go.mod replaces its nested modules with
 * local directories the module zip does not contain. So the five nested modules are downloaded too (pinned), a copy
 * of go.mod in the tool cache points those replaces at them (`go build -modfile`), and the module is built where Go
 * unpacked it, read-only against its own go.sum. Vault 1.19 is under the Business Source License: a test dependency
 * only, never shipped with rekey.
 */
export function ensureVault() {
  const binary = path.join(cacheRoot(), `vault-${VAULT_VERSION}`, 'vault');
  if (fs.existsSync(binary)) return binary;
  const go = requireGo(`Vault ${VAULT_VERSION}`, VAULT_MIN_GO);
  log(
    `building Vault ${VAULT_VERSION} with ${go} (first time only; from 7 minutes on 2 idle cores to half an hour on busy ones)`,
  );
  const { dir: moduleDir } = downloadGoModule(go, ...VAULT_MODULE);
  const replaces = VAULT_NESTED_MODULES.map(([module, version, sum]) => [
    module,
    downloadGoModule(go, module, version, sum).dir,
  ]);

  fs.mkdirSync(cacheRoot(), { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheRoot(), `vault-${VAULT_VERSION}.mod-`));
  try {
    const modfile = path.join(work, 'go.mod');
    fs.writeFileSync(modfile, fs.readFileSync(path.join(moduleDir, 'go.mod')));
    fs.writeFileSync(path.join(work, 'go.sum'), fs.readFileSync(path.join(moduleDir, 'go.sum')));
    const edit = run(go, ['mod', 'edit', ...replaces.map(([module, dir]) => `-replace=${module}=${dir}`), modfile], {
      env: goEnv(),
      cwd: work,
    });
    if (edit.status !== 0) throw new SetupError(`go mod edit of Vault's go.mod failed: ${lastLines(edit.stderr, 2)}`);
    const local = fs
      .readFileSync(modfile, 'utf8')
      .split('\n')
      .filter((line) => /=>\s*\.\.?\//.test(line));
    if (local.length > 0) {
      throw new SetupError(
        `Vault ${VAULT_VERSION}'s go.mod still replaces a module with a local directory: ${local[0]}`,
      );
    }
    return goBuild(go, {
      tool: `Vault ${VAULT_VERSION}`,
      moduleDir,
      pkg: '.',
      binary,
      modfile,
      ldflags: `-X github.com/hashicorp/vault/version.GitCommit=${VAULT_COMMIT}`,
    });
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- tctl (Temporal's older CLI, as operators use it)

export const TCTL_VERSION = '1.18.0';
const TCTL_MODULE_SUM = 'h1:f4kar5U66kPWKcHX767QHBzfhAXVbxdeWREeNvPxFTQ=';
export const TCTL_MIN_GO = [1, 18];

/**
 * tctl, which some operators drive Temporal with. Built from its module as the main module, read-only against its own
 * go.sum (`go install module@version` would first ask the proxy for the module's version list, which a proxy mirror
 * may refuse).
 */
export function ensureTctl() {
  const binary = path.join(cacheRoot(), `tctl-${TCTL_VERSION}`, 'tctl');
  if (fs.existsSync(binary)) return binary;
  const go = requireGo(`tctl ${TCTL_VERSION}`, TCTL_MIN_GO);
  log(`building tctl ${TCTL_VERSION} with ${go} (first time only; 2 to 6 minutes on 2 cores)`);
  const module = 'github.com/temporalio/tctl';
  const { dir: moduleDir } = downloadGoModule(go, module, `v${TCTL_VERSION}`, TCTL_MODULE_SUM);
  return goBuild(go, { tool: `tctl ${TCTL_VERSION}`, moduleDir, pkg: './cmd/tctl', binary });
}

// ---------------------------------------------------------------- time-skipping test server

function testServerPom() {
  return `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.rekey</groupId>
  <artifactId>temporal-test-server-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>io.temporal</groupId>
      <artifactId>temporal-test-server</artifactId>
      <version>${TEST_SERVER_VERSION}</version>
    </dependency>
  </dependencies>
</project>
`;
}

/**
 * Waits until process `child` listens on a TCP port, as Linux's /proc says (the socket inodes among its open files, in
 * the listening sockets of /proc/net/tcp and tcp6): nothing is bound or probed. Resolves with the time it took, or
 * undefined if the process exits or `timeoutMs` passes first. (src/dev/ports.ts has the same reading: this file runs
 * unbuilt.)
 */
async function waitUntilListening(child, timeoutMs) {
  const start = Date.now();
  while (Date.now() - start < timeoutMs && child.exitCode === null && child.signalCode === null) {
    if (listensOnSomePort(child.pid)) return Date.now() - start;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return undefined;
}

function listensOnSomePort(pid) {
  let fds;
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  const inodes = new Set();
  for (const fd of fds) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) inodes.add(match[1]);
    } catch {
      // closed meanwhile
    }
  }
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(table)) continue;
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[3] === '0A' && inodes.has(fields[9])) return true; // 0A: LISTEN
    }
  }
  return false;
}

function canConnect(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export async function ensureTestServer() {
  const dir = path.join(cacheRoot(), `temporal-test-server-${TEST_SERVER_VERSION}`);
  const wrapper = path.join(dir, 'temporal-test-server');
  if (fs.existsSync(wrapper)) return wrapper;

  const java = which('java');
  if (!java) {
    throw new SetupError(
      'Java not found on PATH: install a JDK 17 or newer (e.g. apt install openjdk-17-jdk-headless) for the time-skipping test server',
    );
  }
  const mvn = which('mvn');
  if (!mvn)
    throw new SetupError(
      'Maven not found on PATH: install Maven 3 (e.g. apt install maven) to fetch the time-skipping test server',
    );

  const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-test-server-'));
  fs.writeFileSync(path.join(staging, 'pom.xml'), testServerPom());
  log(`fetching io.temporal:temporal-test-server:${TEST_SERVER_VERSION} from Maven Central`);
  const fetch = run(
    mvn,
    ['-B', '-q', 'dependency:copy-dependencies', '-DincludeScope=runtime', '-DoutputDirectory=lib'],
    { cwd: staging },
  );
  if (fetch.status !== 0) {
    throw new SetupError(
      `Maven could not fetch io.temporal:temporal-test-server:${TEST_SERVER_VERSION} (is Maven Central reachable?): ${lastLines(fetch.stdout + fetch.stderr, 2)}`,
    );
  }
  // The final directory is fixed before the class-data archive is made: the archive records the classpath.
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(staging, dir);
  const jars = fs
    .readdirSync(path.join(dir, 'lib'))
    .filter((name) => name.endsWith('.jar'))
    .sort()
    .map((name) => path.join(dir, 'lib', name));
  const classpath = jars.join(':');
  const archive = path.join(dir, 'classes.jsa');
  // A JVM that starts from an application class-data archive and compiles with C1 only is ready in
  // well under a second on 2 cores; the SDK allows 5 seconds.
  const jvmFlags = ['-XX:TieredStopAtLevel=1', '-XX:+UseSerialGC', '-Xlog:disable'];

  log('recording a class-data archive for a fast test-server start');
  // Port 0: the JVM listens on whatever port the kernel gives it; the setup only needs to know that it listens.
  const trainer = spawn(
    java,
    [...jvmFlags, `-XX:ArchiveClassesAtExit=${archive}`, '-cp', classpath, 'io.temporal.testserver.TestServer', '0'],
    { stdio: 'ignore' },
  );
  const readyAfter = await waitUntilListening(trainer, 60_000);
  await new Promise((resolve) => setTimeout(resolve, 500));
  trainer.kill('SIGTERM'); // a normal JVM shutdown writes the archive
  await new Promise((resolve) => trainer.once('exit', resolve));
  if (readyAfter === undefined) throw new SetupError(`the time-skipping test server did not start with ${java}`);

  const sharedArchive = fs.existsSync(archive) ? [`-XX:SharedArchiveFile=${archive}`, '-Xshare:auto'] : [];
  const script = [
    '#!/bin/sh',
    `# temporal-test-server ${TEST_SERVER_VERSION}, written by rekey's scripts/setup.mjs.`,
    '# Usage: temporal-test-server <port> [--enable-time-skipping]',
    '# exec: the SDK stops the server with SIGKILL, which must reach the JVM itself.',
    `exec ${java} ${[...jvmFlags, ...sharedArchive].join(' ')} -cp ${classpath} io.temporal.testserver.TestServer "$@"`,
    '',
  ].join('\n');
  const tmpWrapper = `${wrapper}.tmp`;
  fs.writeFileSync(tmpWrapper, script, { mode: 0o755 });
  fs.renameSync(tmpWrapper, wrapper);
  return wrapper;
}

// ---------------------------------------------------------------- PostgreSQL

function findPgBin() {
  if (process.env.REKEY_PG_BIN) {
    if (fs.existsSync(path.join(process.env.REKEY_PG_BIN, 'initdb'))) return process.env.REKEY_PG_BIN;
    return undefined;
  }
  const debian = '/usr/lib/postgresql';
  if (fs.existsSync(debian)) {
    const versions = fs
      .readdirSync(debian)
      .filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(debian, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions.length > 0) return path.join(debian, versions[0], 'bin');
  }
  const initdb = which('initdb');
  return initdb ? path.dirname(initdb) : undefined;
}

function pgDataDir(pgBin) {
  if (process.env.REKEY_PG_DATA) return path.resolve(process.env.REKEY_PG_DATA);
  const major = path.basename(path.dirname(pgBin));
  const name = `postgres-${/^\d+$/.test(major) ? major : 'local'}`;
  // initdb refuses to run as root, and postgres cannot enter root's home: as root the cluster lives in
  // /var/cache, owned by the unprivileged `postgres` user.
  return path.join(isRoot() ? '/var/cache/rekey' : cacheRoot(), name);
}

function asPostgresUser(command, args) {
  if (!isRoot()) return [command, args];
  const runuser = which('runuser') || '/usr/sbin/runuser';
  return [runuser, ['-u', process.env.REKEY_PG_USER || 'postgres', '--', command, ...args]];
}

function pgUrl(port) {
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}

export async function ensurePostgres() {
  if (process.env.DATABASE_URL) return { databaseUrl: process.env.DATABASE_URL, managed: false };

  const port = Number(process.env.REKEY_PG_PORT || DEFAULT_PG_PORT);
  const pgBin = findPgBin();
  if (!pgBin) {
    throw new SetupError(
      'PostgreSQL server binaries not found: install PostgreSQL 15+ (e.g. apt install postgresql), set REKEY_PG_BIN to its bin directory, or set DATABASE_URL',
    );
  }
  const dataDir = pgDataDir(pgBin);
  const [pgCtl, pgCtlArgs] = asPostgresUser(path.join(pgBin, 'pg_ctl'), ['-D', dataDir, 'status']);
  const status = run(pgCtl, pgCtlArgs);
  if (status.status === 0 && (await canConnect(port))) return { databaseUrl: pgUrl(port), managed: true, dataDir };
  if (await canConnect(port)) {
    throw new SetupError(
      `port ${port} is taken by another program: set REKEY_PG_PORT to a free port, or DATABASE_URL to use that server`,
    );
  }

  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    log(`creating a PostgreSQL cluster in ${dataDir}`);
    fs.mkdirSync(path.dirname(dataDir), { recursive: true, mode: 0o755 });
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    if (isRoot()) {
      const owner = run('chown', ['-R', `${process.env.REKEY_PG_USER || 'postgres'}:`, dataDir]);
      if (owner.status !== 0) {
        throw new SetupError(
          `running as root, the cluster must belong to an unprivileged user: create user 'postgres' or set REKEY_PG_USER (${lastLines(owner.stderr, 1)})`,
        );
      }
    }
    const [initdb, initdbArgs] = asPostgresUser(path.join(pgBin, 'initdb'), [
      '-D',
      dataDir,
      '-U',
      'postgres',
      '--auth=trust',
      '--encoding=UTF8',
      '--no-instructions',
    ]);
    const init = run(initdb, initdbArgs, { cwd: '/' });
    if (init.status !== 0) throw new SetupError(`initdb failed: ${lastLines(init.stderr, 2)}`);
    // Loopback only, no Unix socket (its default directory may not exist or be writable).
    fs.appendFileSync(
      path.join(dataDir, 'postgresql.conf'),
      `\n# rekey local cluster\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\nshared_buffers = 256MB\n`,
    );
  }
  log(`starting PostgreSQL on 127.0.0.1:${port}`);
  const [start, startArgs] = asPostgresUser(path.join(pgBin, 'pg_ctl'), [
    '-D',
    dataDir,
    '-l',
    path.join(dataDir, 'server.log'),
    '-o',
    `-p ${port}`,
    '-w',
    '-t',
    '60',
    'start',
  ]);
  const started = run(start, startArgs, { cwd: '/' });
  if (started.status !== 0) {
    throw new SetupError(
      `PostgreSQL did not start (see ${path.join(dataDir, 'server.log')}): ${lastLines(started.stderr, 2)}`,
    );
  }
  return { databaseUrl: pgUrl(port), managed: true, dataDir };
}

/** Restarts the local cluster with an immediate (crash-like) stop: the chaos suite's PostgreSQL fault. */
export function restartPostgres() {
  const pgBin = findPgBin();
  if (!pgBin || process.env.DATABASE_URL)
    throw new SetupError('only the local cluster made by the setup can be restarted');
  const dataDir = pgDataDir(pgBin);
  const [restart, restartArgs] = asPostgresUser(path.join(pgBin, 'pg_ctl'), [
    '-D',
    dataDir,
    '-l',
    path.join(dataDir, 'server.log'),
    '-m',
    'immediate',
    '-w',
    'restart',
  ]);
  const result = run(restart, restartArgs, { cwd: '/', stdio: ['ignore', 'ignore', 'pipe'] });
  if (result.status !== 0) throw new SetupError(`PostgreSQL did not restart: ${lastLines(result.stderr, 2)}`);
}

export function stopPostgres() {
  const pgBin = findPgBin();
  if (!pgBin) return;
  const dataDir = pgDataDir(pgBin);
  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) return;
  const [stop, stopArgs] = asPostgresUser(path.join(pgBin, 'pg_ctl'), ['-D', dataDir, '-m', 'fast', 'stop']);
  run(stop, stopArgs, { cwd: '/', stdio: 'ignore' });
}

// ---------------------------------------------------------------- Debian tools: Chromium, promtool

/**
 * A tool some tests need, found on PATH (or by its variable), else installed with Debian's apt-get where this process
 * may. Where it cannot, the manifest says why and only the tests that need it fail, with that line.
 */
function ensureDebianTool({ label, variable, names, paths = [], debianPackage, install }) {
  const find = () => {
    const given = process.env[variable];
    if (given) {
      if (!fs.existsSync(given)) throw new SetupError(`${variable} names ${given}, which does not exist`);
      return given;
    }
    for (const name of names) {
      const found = which(name);
      if (found) return found;
    }
    return paths.find((candidate) => fs.existsSync(candidate));
  };
  const found = find();
  if (found) return { path: found };
  const why = `${label} not found: install it (${install}) or set ${variable} to its binary`;
  const aptGet = which('apt-get');
  if (!aptGet || typeof process.getuid !== 'function' || process.getuid() !== 0) {
    log(why);
    return { missing: why };
  }
  log(`installing ${debianPackage} with apt-get (first time only)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const args = ['install', '-y', '--no-install-recommends', debianPackage];
  let installed = run(aptGet, args, { env });
  if (installed.status !== 0) {
    run(aptGet, ['update'], { env });
    installed = run(aptGet, args, { env });
  }
  const after = find();
  if (after) return { path: after };
  const reason = `apt-get install ${debianPackage} failed: ${lastLines(installed.stdout + installed.stderr, 2)}`;
  log(reason);
  return { missing: `${reason}; ${why}` };
}

/** A headless Chromium for the test that opens the Web UI. */
export function ensureChromium() {
  return ensureDebianTool({
    label: 'Chromium',
    variable: 'REKEY_CHROMIUM',
    names: ['chromium', 'chromium-browser', 'google-chrome-stable', 'google-chrome'],
    paths: [
      '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
      '/Applications/Chromium.app/Contents/MacOS/Chromium',
    ],
    debianPackage: 'chromium',
    install: 'Debian/Ubuntu: apt-get install chromium; macOS: brew install --cask chromium',
  });
}

/** Prometheus's promtool, which checks and unit-tests the shipped alert rules. */
export function ensurePromtool() {
  return ensureDebianTool({
    label: 'promtool',
    variable: 'REKEY_PROMTOOL',
    names: ['promtool'],
    debianPackage: 'prometheus',
    install: 'Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus',
  });
}

// ---------------------------------------------------------------- native AES-GCM

/**
 * The native AES-GCM addon (native/aes-gcm), built with cargo into the tool cache, keyed by its sources, the Rust
 * toolchain and the platform. Optional: without cargo, or when the build fails, the manifest says why and rekey uses
 * Node's AES-GCM (REKEY_AES_GCM=auto).
 */
export function ensureAesGcmAddon() {
  const crate = path.join(projectRoot, 'native', 'aes-gcm');
  const cargo = which('cargo') ?? [path.join(os.homedir(), '.cargo', 'bin', 'cargo')].find((c) => fs.existsSync(c));
  if (!cargo) {
    const why =
      "cargo not found: install Rust (https://rustup.rs) to build the native AES-GCM addon; without it rekey uses Node's AES-GCM";
    log(why);
    return { missing: why };
  }
  const env = { ...process.env, PATH: `${path.dirname(cargo)}${path.delimiter}${process.env.PATH ?? ''}` };
  const toolchain = run(cargo, ['--version'], { env }).stdout.trim();
  const hash = createHash('sha256');
  for (const file of ['Cargo.toml', 'Cargo.lock', 'build.rs', path.join('src', 'lib.rs')]) {
    hash.update(file).update(fs.readFileSync(path.join(crate, file)));
  }
  hash.update(`${toolchain} ${process.platform} ${process.arch}`);
  const dir = path.join(cacheRoot(), 'aes-gcm', hash.digest('hex').slice(0, 16));
  const addon = path.join(dir, 'rekey_aes_gcm.node');
  if (fs.existsSync(addon)) return { path: addon };
  log('building the native AES-GCM addon with cargo (first time only)');
  const targetDir = path.join(cacheRoot(), 'aes-gcm', 'target');
  const built = run(cargo, ['build', '--release', '--locked', '--manifest-path', path.join(crate, 'Cargo.toml')], {
    env: { ...env, CARGO_TARGET_DIR: targetDir },
  });
  const library = path.join(
    targetDir,
    'release',
    process.platform === 'darwin'
      ? 'librekey_aes_gcm.dylib'
      : process.platform === 'win32'
        ? 'rekey_aes_gcm.dll'
        : 'librekey_aes_gcm.so',
  );
  if (built.status !== 0 || !fs.existsSync(library)) {
    const why = `cargo build of native/aes-gcm failed (rekey uses Node's AES-GCM): ${lastLines(built.stderr, 3)}`;
    log(why);
    return { missing: why };
  }
  fs.mkdirSync(dir, { recursive: true });
  const temporary = `${addon}.${process.pid}.tmp`;
  fs.copyFileSync(library, temporary);
  fs.renameSync(temporary, addon);
  return { path: addon };
}

// ---------------------------------------------------------------- moto (AWS Secrets Manager and KMS, for tests)

export const MOTO_MIN_PYTHON = [3, 10];

/** Python 3 from REKEY_PYTHON or PATH, with its version; a missing or old one stops the setup in one line. */
function findPython() {
  const python = process.env.REKEY_PYTHON || which('python3');
  if (!python) {
    throw new SetupError(
      `Python 3 not found on PATH: install Python >= ${MOTO_MIN_PYTHON.join('.')} with venv (Debian/Ubuntu: apt-get install python3 python3-venv; macOS: brew install python), or set REKEY_PYTHON`,
    );
  }
  const version = run(python, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])']).stdout.trim();
  const [major, minor] = version.split('.').map(Number);
  if (!(major > MOTO_MIN_PYTHON[0] || (major === MOTO_MIN_PYTHON[0] && minor >= MOTO_MIN_PYTHON[1]))) {
    throw new SetupError(
      `Python ${version} is too old: moto (the AWS server the tests use) needs Python >= ${MOTO_MIN_PYTHON.join('.')}`,
    );
  }
  return { python, version };
}

/**
 * A virtual environment in the tool cache with the pinned requirements file `scripts/<requirements>` installed, keyed
 * by that file and the Python version; returns the path of its `bin/<binary>`. The environment counts only once its
 * last step wrote `.complete`; a half-built one is removed and rebuilt.
 */
function ensureVenv(name, requirementsFile, binary) {
  const { python, version } = findPython();
  const requirements = path.join(projectRoot, 'scripts', requirementsFile);
  const hash = createHash('sha256').update(fs.readFileSync(requirements)).update(version).digest('hex').slice(0, 16);
  const dir = path.join(cacheRoot(), name, hash);
  const tool = path.join(dir, 'bin', binary);
  const complete = path.join(dir, '.complete');
  if (fs.existsSync(complete) && fs.existsSync(tool)) return tool;
  fs.rmSync(dir, { recursive: true, force: true });
  log(`installing ${name} from PyPI (first time only)`);
  const venv = run(python, ['-m', 'venv', dir]);
  if (venv.status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new SetupError(
      `python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv): ${lastLines(venv.stderr || venv.stdout, 2)}`,
    );
  }
  const pip = run(path.join(dir, 'bin', 'python'), [
    '-m',
    'pip',
    'install',
    '--disable-pip-version-check',
    '--no-input',
    '--quiet',
    '-r',
    requirements,
  ]);
  if (pip.status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    const output = `${pip.stderr}\n${pip.stdout}`;
    const unreachable =
      /ConnectionError|NewConnectionError|Temporary failure in name resolution|No matching distribution/.test(output);
    throw new SetupError(
      unreachable
        ? `cannot download ${name} from PyPI (check the network, or PIP_INDEX_URL for a mirror): ${lastLines(pip.stderr, 2)}`
        : `pip install of ${name} failed: ${lastLines(pip.stderr || pip.stdout, 2)}`,
    );
  }
  if (!fs.existsSync(tool)) throw new SetupError(`pip installed ${name}, but ${tool} is missing`);
  fs.writeFileSync(complete, `${new Date().toISOString()}\n`);
  return tool;
}

/**
 * moto's standalone server, the AWS Secrets Manager and KMS the tests run against: the pinned
 * scripts/moto-requirements.txt in a virtual environment of the tool cache.
 */
export function ensureMoto() {
  return ensureVenv('moto', 'moto-requirements.txt', 'moto_server');
}

/**
 * The AWS CLI, for the docs tests that run the pages' `aws …` lines against moto: the pinned
 * scripts/awscli-requirements.txt in a virtual environment of its own (its botocore is not moto's).
 */
export function ensureAwsCli() {
  return ensureVenv('awscli', 'awscli-requirements.txt', 'aws');
}

// ---------------------------------------------------------------- main

export function readManifest() {
  return JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
}

const steps = [
  'npm',
  'temporal-cli',
  'test-server',
  'postgres',
  'moto',
  'awscli',
  'vault',
  'tctl',
  'chromium',
  'promtool',
  'aes-gcm',
];

export async function setup(only = steps) {
  const manifest = fs.existsSync(manifestPath) ? readManifest() : {};
  if (only.includes('npm')) ensureNodeModules();
  if (only.includes('temporal-cli')) manifest.temporalCli = ensureTemporalCli();
  if (only.includes('test-server')) manifest.testServer = await ensureTestServer();
  if (only.includes('postgres')) {
    const pg = await ensurePostgres();
    manifest.databaseUrl = pg.databaseUrl;
  }
  if (only.includes('moto')) manifest.motoServer = ensureMoto();
  if (only.includes('awscli')) manifest.awsCli = ensureAwsCli();
  if (only.includes('vault')) manifest.vault = ensureVault();
  if (only.includes('tctl')) manifest.tctl = ensureTctl();
  for (const [step, ensure, key] of [
    ['chromium', ensureChromium, 'chromium'],
    ['promtool', ensurePromtool, 'promtool'],
    ['aes-gcm', ensureAesGcmAddon, 'aesGcmAddon'],
  ]) {
    if (!only.includes(step)) continue;
    const tool = ensure();
    delete manifest[key];
    delete manifest[`${key}Missing`];
    Object.assign(manifest, tool.path ? { [key]: tool.path } : { [`${key}Missing`]: tool.missing });
  }
  manifest.cacheDir = cacheRoot();
  const serialized = `${JSON.stringify(manifest, null, 2)}\n`;
  const digest = (text) => createHash('sha256').update(text).digest('hex');
  if (!fs.existsSync(manifestPath) || digest(fs.readFileSync(manifestPath, 'utf8')) !== digest(serialized)) {
    fs.writeFileSync(manifestPath, serialized);
  }
  return manifest;
}

async function main(argv) {
  if (argv.includes('--stop-postgres')) {
    stopPostgres();
    return;
  }
  const onlyIndex = argv.indexOf('--only');
  const only = onlyIndex >= 0 ? argv[onlyIndex + 1].split(',') : steps;
  for (const step of only) {
    if (!steps.includes(step)) throw new SetupError(`unknown step '${step}': choose from ${steps.join(', ')}`);
  }
  const started = Date.now();
  await setup(only);
  log(`ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((error) => {
    if (error instanceof SetupError) {
      process.stderr.write(`rekey setup: ${error.message}\n`);
    } else {
      process.stderr.write(`rekey setup: unexpected failure: ${error && error.message ? error.message : error}\n`);
    }
    process.exit(1);
  });
}
