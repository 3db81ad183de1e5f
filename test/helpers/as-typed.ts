// The one place where a test that runs a line of the README or docs/ makes it fit this machine, the same for every
// page. A page writes its lines for the operator's servers (the dev server on localhost:7233, the admin API on
// localhost:8080, the databases mycelium, talos and shop) and its placeholders (`<id>`, `<recorded ARN>`, `…`); a test
// runs them against servers of its own on ports the OS gave. The rewriting is only this:
//   - the servers' addresses go in through the environment variables the pages document for them (docs/01:
//     TEMPORAL_ADDRESS for rekey and the `temporal` CLI, TEMPORAL_CLI_ADDRESS for tctl; DATABASE_URL; AWS_ENDPOINT_URL
//     and the AWS credentials; VAULT_ADDR and VAULT_TOKEN), never by editing the line;
//   - where a line itself names a page's fixed address or database, `servers` says what stands in for it, each
//     replacement listed (`FIXED`), and a line with a fixed address the test has no stand-in for is an error;
//   - each placeholder is filled from `fill`, and a placeholder left unfilled is an error.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { expect, inject } from 'vitest';
import { projectRoot } from '../../src/project-paths';
import { docPage } from './readme';

/** The servers a test runs a page's line against, where they are not the page's. */
export interface TestServers {
  /** host:port of the Temporal frontend (the page's localhost:7233). */
  temporalAddress?: string;
  /** URL of the admin API (the page's http://localhost:8080). */
  adminUrl?: string;
  /** URL of the Web UI (the page's http://localhost:8233). */
  webUiUrl?: string;
  /** The database rekey and psql use (DATABASE_URL). */
  databaseUrl?: string;
  /** The page's database names (mycelium, talos, shop) → the test's. */
  databases?: Record<string, string>;
  /** AWS_ENDPOINT_URL, AWS_REGION and credentials of a moto server. */
  aws?: Record<string, string>;
  /** VAULT_ADDR and VAULT_TOKEN of a Vault dev server. */
  vault?: Record<string, string>;
}

/** The pages' fixed addresses, and which of `TestServers` stands in for each. */
const FIXED: { text: RegExp; by: (servers: TestServers) => string | undefined }[] = [
  { text: /\b(?:localhost|127\.0\.0\.1):7233\b/g, by: (s) => s.temporalAddress },
  { text: /\bhttp:\/\/(?:localhost|127\.0\.0\.1):8080\b/g, by: (s) => s.adminUrl },
  { text: /\bhttp:\/\/(?:localhost|127\.0\.0\.1):8233\b/g, by: (s) => s.webUiUrl },
];

/** A line a page gives in its prose (its line breaks joined): fails when the page no longer says it. */
export function documentedLine(page: string, line: string): string {
  expect(docPage(page).replace(/\s*\n\s*/g, ' '), `${page} gives \`${line}\``).toContain(line);
  return line;
}

/**
 * `line` as this test runs it: each placeholder of `fill` (`<id>`, `…`) replaced by its value, each fixed address by
 * its stand-in, each of the page's database names (`databases`) as a whole word by the test's.
 */
export function asTyped(line: string, fill: Record<string, string> = {}, servers: TestServers = {}): string {
  let out = line;
  for (const [placeholder, value] of Object.entries(fill)) out = out.replaceAll(placeholder, value);
  for (const fixed of FIXED) {
    if (out.search(fixed.text) < 0) continue;
    const by = fixed.by(servers);
    if (by === undefined) throw new Error(`\`${line}\` names ${fixed.text.source}: the test gives no server for it`);
    out = out.replace(fixed.text, by);
  }
  for (const [name, value] of Object.entries(servers.databases ?? {}))
    out = out.replace(new RegExp(`(?<![\\w/-])${name}(?![\\w-])`, 'g'), value);
  const left = /<[a-zA-Z][^<>]*>|…/.exec(out);
  if (left) throw new Error(`\`${line}\`: the test fills no value for ${left[0]}`);
  return out;
}

/**
 * What an operator's shell holds to reach `servers`, in the variables the pages document, and nothing else of this
 * process's environment: PATH (the toolchain's `temporal`, `tctl`, `vault` and `aws` first), HOME.
 */
export function operatorEnv(servers: TestServers): NodeJS.ProcessEnv {
  const toolchain = inject('toolchain');
  const bins = [toolchain.temporalCli, toolchain.tctl, toolchain.vault, toolchain.awsCli].map((tool) =>
    path.dirname(tool),
  );
  return {
    PATH: [...bins, process.env.PATH].join(':'),
    HOME: process.env.HOME,
    ...(servers.temporalAddress && {
      TEMPORAL_ADDRESS: servers.temporalAddress,
      TEMPORAL_CLI_ADDRESS: servers.temporalAddress,
    }),
    ...(servers.databaseUrl && { DATABASE_URL: servers.databaseUrl }),
    ...servers.aws,
    // The AWS CLI v1 reads its region from AWS_DEFAULT_REGION only (v2 and the SDK rekey uses read AWS_REGION too).
    ...(servers.aws?.AWS_REGION && { AWS_DEFAULT_REGION: servers.aws.AWS_REGION }),
    ...servers.vault,
  };
}

export interface LineResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `line` in bash in the project root with exactly `env`, as an operator's terminal runs it. */
export function runLine(line: string, env: NodeJS.ProcessEnv, withinMs = 60_000): Promise<LineResult> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', line], { cwd: projectRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      stderr += `\n(not finished within ${withinMs} ms)`;
      child.kill('SIGKILL');
    }, withinMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
