// The commands of the README and of the guide in docs/, as an operator copies them: a test runs them with only what
// names this machine's servers filled in, so a documented command cannot stop working unnoticed.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../../src/project-paths';

/** A page of the documentation, by its path from the project root (`README.md`, `docs/02-worker-per-database.md`). */
export function docPage(page: string): string {
  return fs.readFileSync(path.join(projectRoot, page), 'utf8');
}

/** The text of `page` from the line `heading` on (to the end of the page). */
export function docSection(page: string, heading: string): string {
  const text = docPage(page);
  const at = text.indexOf(`\n${heading}\n`);
  if (at < 0) throw new Error(`${page} has no heading '${heading}'`);
  return text.slice(at);
}

/**
 * The cells of each row of `page`'s table whose header row is `header` (its cells joined by ' | '), trimmed, as
 * written; the separator row under the header is passed over.
 */
export function docTable(page: string, header: string): string[][] {
  const lines = docPage(page).split('\n');
  const cells = (line: string) =>
    line
      .slice(1, -1)
      .split('|')
      .map((cell) => cell.trim());
  const at = lines.findIndex((line) => line.startsWith('|') && cells(line).join(' | ') === header);
  if (at < 0) throw new Error(`${page} has no table headed '${header}'`);
  const rows: string[][] = [];
  for (const line of lines.slice(at + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(cells(line));
  }
  return rows;
}

/**
 * The shell commands of the first ```sh block under `heading` of `page` (the first that contains `containing`, if
 * given), continued lines (a trailing `\`) joined.
 */
export function docCommands(page: string, heading: string, containing = ''): string[] {
  const blocks = [...docSection(page, heading).matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const block = blocks.find((text) => text.includes(containing));
  if (block === undefined) throw new Error(`${page} has no sh block under '${heading}' with '${containing}'`);
  return block
    .replace(/\\\n\s*/g, '')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
}

/**
 * The variables the `export …` lines of the sh blocks under `heading` set before the first block that contains
 * `containing`: name → value as written.
 */
export function docExports(page: string, heading: string, containing: string): Record<string, string> {
  const exported: Record<string, string> = {};
  for (const [, block] of docSection(page, heading).matchAll(/```sh\n([\s\S]*?)```/g)) {
    if (block!.includes(containing)) return exported;
    for (const [, assignments] of block!.matchAll(/^export (.+)$/gm))
      for (const [, name, value] of assignments!.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=(\$\([^)]*\)|\S+)/g))
        exported[name!] = value!;
  }
  throw new Error(`${page} has no sh block under '${heading}' with '${containing}'`);
}

export interface EnvCommand {
  /** The variables the command sets, with placeholders (`…`, `<…>`) replaced by `fill`. */
  env: Record<string, string>;
  /** The npm script it runs (`worker`, `admin`). */
  script: string;
}

/**
 * `NAME=value … npm run <script>   # comment` parsed; each placeholder value is replaced by `fill[NAME]`, and a
 * placeholder the test does not fill is an error (the README gained a variable the test does not know).
 */
export function envCommand(line: string, fill: Record<string, string>): EnvCommand {
  const match = /^((?:[A-Za-z_][A-Za-z0-9_]*=(?:<[^>]*>|\S+)\s+)*)npm run (\S+)/.exec(line);
  if (!match) throw new Error(`not an 'NAME=value … npm run <script>' command: ${line}`);
  const env: Record<string, string> = {};
  for (const [, name, value] of match[1]!.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=(<[^>]*>|\S+)/g)) {
    const placeholder = value!.includes('…') || value!.startsWith('<') || value!.startsWith('$');
    if (placeholder && fill[name!] === undefined) throw new Error(`the documented ${name}=${value} has no test value`);
    env[name!] = placeholder ? fill[name!]! : value!;
  }
  return { env, script: match[2]! };
}

export interface RunningProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
  /** Resolves once the output contains `text`; rejects, with the output, if the process exits first. */
  until(text: string, withinMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Runs `npm run <script>` as package.json defines it (`node dist/src/…`), with exactly `env` (and PATH). */
export function runScript(command: EnvCommand, extra: Record<string, string>): RunningProcess {
  const scripts = (
    JSON.parse(fs.readFileSync(path.join(projectRoot, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    }
  ).scripts;
  const [node, ...args] = (scripts[command.script] ?? '').split(' ');
  if (node !== 'node') throw new Error(`npm run ${command.script} is not 'node …': ${scripts[command.script]}`);
  const child = spawn(process.execPath, args, {
    cwd: projectRoot,
    env: { PATH: process.env.PATH, ...command.env, ...extra },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  return {
    child,
    output: () => output,
    exited,
    async until(text, withinMs = 60_000) {
      const deadline = Date.now() + withinMs;
      while (!output.includes(text)) {
        if (child.exitCode !== null) throw new Error(`npm run ${command.script} exited ${child.exitCode}: ${output}`);
        if (Date.now() > deadline)
          throw new Error(`npm run ${command.script}: no '${text}' within ${withinMs} ms: ${output}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
