// Issue 25 and the charter: every command in the README and docs/ works exactly as written, on a fresh database, as a
// new operator types it. This harness reads each page's shell blocks in order and runs them, as written, in one bash
// shell per guide (an `export` carries to the next page, as in the operator's terminal): long-running commands
// (marked `<!-- docs: background, ready when "…" -->`) in the background until their output says they are ready,
// commands an operator repeats until a run gets somewhere (`<!-- docs: until "…" -->`) until their output says so.
// The shell gets PATH, HOME, and an npm prefix of its own (so `npm link` puts `rekey` in a scratch bin, not the
// machine's), and REKEY_METRICS_PORT=0 and REKEY_TEMPORAL_METRICS_PORT=0 (docs/08: any free port, off), so that the
// guide's workers need no fixed port free on a machine that runs other tests; nothing else of this process's
// environment. It starts from fresh databases: those the pages create
// (`createdb … <name>`) are dropped first.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';
import { pageFences, SHELL_LANGUAGES, type Fence } from '../helpers/doc-fences';

/** The operator's guide, in the order an operator follows it. */
const GUIDE = [
  'docs/01-dev-server-or-cluster.md',
  'docs/02-worker-per-database.md',
  'docs/03-connect-your-application.md',
  'docs/04-rotate-watch-pause-confirm.md',
  'docs/05-schedules.md',
  'docs/06-key-stores.md',
  'docs/07-upgrading.md',
  'docs/08-production.md',
];

/**
 * Shell blocks that do not run yet, each with why: a block of `page` whose text contains `block` (every block of the
 * page where `block` is empty). The guide runs without them (each page makes its own database); the test fails when
 * an entry names no block any more (take it off this list). Every entry is work left, listed in the lead's report.
 */
const NOT_RUN_YET: { page: string; block: string; why: string }[] = [
  {
    page: 'docs/04-rotate-watch-pause-confirm.md',
    block: '',
    why:
      "the `temporal` CLI block is seven independent examples on rekey's own table, not a sequence (overrideFleetGate " +
      'answers only while the fleet gate waits, pauseRotation after the pause signal is refused, setGrace only ' +
      "before or in grace), and no page sets up rekey's own table with an application yet (a worker with " +
      'REKEY_KEK_v1 and v2, an application holding both); test/surfaces/temporal-cli.test.ts runs each line against ' +
      'its own fixture',
  },
];
const notRunYet = (fence: Fence) =>
  NOT_RUN_YET.some((entry) => entry.page === fence.page && fence.text.includes(entry.block));
/**
 * A block of the guide that another test runs as written (`<!-- docs: run by <test file> -->`), because what it starts
 * from is no command (an application's process, page 3's TypeScript) and what it needs is a server the guide's shell
 * does not start (moto for AWS KMS).
 */
const runElsewhere = (fence: Fence) => fence.marker?.kind === 'elsewhere';

/** What the guide's shell is given beside PATH and HOME: settings docs/08 documents, no fixed port for /metrics. */
const GUIDE_ENV = { REKEY_METRICS_PORT: '0', REKEY_TEMPORAL_METRICS_PORT: '0' };

/**
 * Holds `port` on 127.0.0.1 while the guide runs, as another process on a busy machine may (the worker's defaults
 * 9464 and 9465): a port someone else already holds is held too, and is left to them.
 */
function holdPort(port: number): Promise<net.Server | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-docs-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

const allPages = () => [
  'README.md',
  ...fs
    .readdirSync(path.join(projectRoot, 'docs'))
    .filter((name) => name.endsWith('.md'))
    .map((name) => `docs/${name}`),
];
const shellFences = (page: string) => pageFences(page).filter((fence) => SHELL_LANGUAGES.includes(fence.lang));
/** The shell blocks and the stop markers, in page order: what the guide's shell runs. */
const runnable = (page: string) =>
  pageFences(page).filter((fence) => SHELL_LANGUAGES.includes(fence.lang) || fence.lang === 'stop');

const quote = (text: string) => `'${text.replace(/'/g, `'\\''`)}'`;

/** One bash script that runs `fences` in order, saying which one it is at, and stops at the first that fails. */
function guideScript(fences: Fence[]): string {
  const out: string[] = [
    'set -eEuo pipefail',
    'BG=()',
    'stop_background() { for pid in "${BG[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }',
    'trap stop_background EXIT',
    `SCRATCH=${quote(scratch)}`,
    'on_error() {',
    '  echo "@@docs failed (exit $1): $2" >&2',
    '  for log in "$SCRATCH"/block-*.log; do echo "@@docs $log:" >&2; tail -n 60 "$log" >&2; done',
    '}',
    `trap 'on_error $? "$BASH_COMMAND"' ERR`,
  ];
  fences.forEach((fence, n) => {
    const where = `${fence.page}:${fence.line}`;
    const file = path.join(scratch, `block-${n}.sh`);
    fs.writeFileSync(file, `${fence.text}\n`);
    out.push(`echo "@@docs ${where}" >&2`);
    if (fence.marker?.kind === 'stop') {
      const command = fence.marker.command;
      const index = fences
        .map((f, m) => (m < n && f.marker?.kind === 'background' && f.text.includes(command) ? m : -1))
        .reduce((last, m) => Math.max(last, m), -1);
      if (index < 0) throw new Error(`${where}: no background command before it contains '${command}'`);
      out.push(`kill -TERM -- "-$BG_${index}"; while kill -0 "$BG_${index}" 2>/dev/null; do sleep 0.2; done`);
    } else if (fence.marker?.kind === 'background') {
      const log = path.join(scratch, `block-${n}.log`);
      out.push(
        `setsid bash ${quote(file)} > ${quote(log)} 2>&1 & BG+=($!); pid=$!; BG_${n}=$!; deadline=$((SECONDS + 180))`,
        `until grep -qF -- ${quote(fence.marker.ready)} ${quote(log)} 2>/dev/null; do`,
        `  if ! kill -0 "$pid" 2>/dev/null; then echo "@@docs ${where}: exited before ${fence.marker.ready.replace(/["$`\\]/g, '')}" >&2; tail -n 30 ${quote(log)} >&2; exit 1; fi`,
        `  if (( SECONDS > deadline )); then echo "@@docs ${where}: not ready within 180 s" >&2; tail -n 30 ${quote(log)} >&2; exit 1; fi`,
        '  sleep 0.2',
        'done',
      );
    } else if (fence.marker?.kind === 'until') {
      out.push(
        'deadline=$((SECONDS + 300))',
        `until out=$(source ${quote(file)} 2>&1) && echo "$out" && grep -qF -- ${quote(fence.marker.text)} <<<"$out"; do`,
        `  if (( SECONDS > deadline )); then echo "@@docs ${where}: no ${fence.marker.text.replace(/["$`\\]/g, '')} within 300 s: $out" >&2; exit 1; fi`,
        '  sleep 1',
        'done',
      );
    } else {
      out.push(`source ${quote(file)}`);
    }
  });
  out.push('echo "@@docs done" >&2');
  return out.join('\n');
}

/** Runs the script in the project root with only PATH, HOME and a scratch npm prefix. */
function runGuide(script: string, withinMs: number): Promise<{ code: number | null; output: string }> {
  const prefix = path.join(scratch, 'npm-prefix');
  fs.mkdirSync(path.join(prefix, 'bin'), { recursive: true });
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', script], {
      cwd: projectRoot,
      env: {
        PATH: `${path.join(prefix, 'bin')}:${process.env.PATH}`,
        HOME: process.env.HOME,
        npm_config_prefix: prefix,
        ...GUIDE_ENV,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => {
      output += `\n@@docs the guide did not finish within ${withinMs} ms`;
      process.kill(-child.pid!, 'SIGTERM');
    }, withinMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/** Drops the databases the pages create, so each run starts from fresh ones. */
async function dropCreatedDatabases(fences: Fence[]): Promise<void> {
  const names = fences.flatMap((fence) =>
    [...fence.text.matchAll(/^createdb .* (\w+)$/gm)].map((m) => ({ name: m[1]!, line: m[0] })),
  );
  for (const { name, line } of names) {
    // A copy (`createdb … --template <original> <name>`) is dropped like any other; the original is not named.
    const dropdb = line
      .replace(/^createdb /, 'dropdb --if-exists --force ')
      .replace(/ (-T|--template)[ =]\S+/, '')
      .replace(/ \w+$/, ` ${name}`);
    const { code, output } = await runGuide(dropdb, 30_000);
    if (code !== 0) throw new Error(`${dropdb}: ${output}`);
  }
}

describe('every shell command of the README and docs/, as written', () => {
  it('every shell block of every page is run by this harness, or its page is listed as not running yet', () => {
    const unknown = allPages().filter(
      (page) => page !== 'README.md' && !GUIDE.includes(page) && shellFences(page).length > 0,
    );
    expect(unknown, 'reference pages hold no commands: move them into the guide').toEqual([]);
    for (const fence of GUIDE.flatMap(shellFences).filter(runElsewhere)) {
      const by = fence.marker?.kind === 'elsewhere' ? fence.marker.by : '';
      expect(by, `${fence.page}:${fence.line} is run by a test file`).toMatch(/^test\/.+\.test\.ts$/);
      expect(fs.readFileSync(path.join(projectRoot, by), 'utf8'), `${by} reads ${fence.page}`).toContain(
        fence.page.replace(/^docs\//, ''),
      );
    }
    for (const entry of NOT_RUN_YET)
      expect(
        shellFences(entry.page).filter((fence) => fence.text.includes(entry.block)).length,
        `${entry.page} has no shell block with '${entry.block}' left: take it off NOT_RUN_YET`,
      ).toBeGreaterThan(0);
  });

  it("the README's two commands are exactly npm run demo and npm test, which the demo test and CI run", () => {
    const fences = shellFences('README.md');
    expect(fences.map((fence) => fence.marker)).toEqual([
      { kind: 'elsewhere', by: 'test/surfaces/demo.test.ts and .ci/run' },
    ]);
    expect(fences[0]!.text.split('\n').map((line) => line.replace(/\s+#.*$/, ''))).toEqual([
      'npm run demo',
      'npm test',
    ]);
    expect(fs.readFileSync(path.join(projectRoot, '.ci/run'), 'utf8')).toMatch(/^npm test$/m);
    expect(fs.readFileSync(path.join(projectRoot, 'test/surfaces/demo.test.ts'), 'utf8')).toContain('dist/src/demo.js');
  });

  it(
    "the operator's guide, page 01 on, in one shell on fresh databases: every command exits 0, with the worker's " +
      'default metrics ports 9464 and 9465 held by another process',
    async () => {
      const fences = GUIDE.flatMap(runnable).filter((fence) => !notRunYet(fence) && !runElsewhere(fence));
      await dropCreatedDatabases(fences);
      const held = await Promise.all([9464, 9465].map(holdPort));
      const { code, output } = await runGuide(guideScript(fences), 20 * 60_000).finally(() =>
        held.forEach((server) => server?.close()),
      );
      // What the operator would have seen, for whoever reads a run: test-results/docs-guide.log.
      fs.mkdirSync(path.join(projectRoot, 'test-results'), { recursive: true });
      fs.writeFileSync(path.join(projectRoot, 'test-results', 'docs-guide.log'), output);
      expect(code, output.split('\n').slice(-60).join('\n')).toBe(0);
      expect(output).toContain('@@docs done');
    },
    21 * 60_000,
  );
});
