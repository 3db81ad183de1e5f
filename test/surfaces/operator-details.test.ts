// Issue 25, the smaller findings of "Start the way the operator's system already runs": each refusal says what to
// fix, at once, in one line (a configuration file's with its excerpt), and every binary says what it reads.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ENVIRONMENT } from '../../src/env-vars';
import { RekeyMetrics, serveMetrics } from '../../src/observability/metrics';
import { projectRoot } from '../../src/project-paths';
import { runRekey } from '../helpers/cli';
import { documentedAs, variablesRead } from '../helpers/env-read';

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-details-'));
const SOME_DATABASE = 'postgres://rekey@127.0.0.1:1/rekey';

function node(script: string, args: string[], env: NodeJS.ProcessEnv) {
  return spawnSync(process.execPath, [path.join(projectRoot, 'dist', 'src', script), ...args], {
    env: { PATH: process.env.PATH, ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
}

describe('what an operator is told: at once, in one line, with what to fix', () => {
  afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

  it('Finding: keys list on a keyring file that does not exist exits 3 and says how to make one, where it printed nothing and exited 0; nothing is created', async () => {
    const file = path.join(scratch, 'missing.json');
    const listed = await runRekey(['keys', '--keyring', file, 'list'], { PATH: process.env.PATH });
    expect(listed).toEqual({
      code: 3,
      stdout: '',
      stderr: `rekey: no keyring at ${file}: check the path, or create it with 'rekey keys generate --keyring ${file}'\n`,
    });
    expect(fs.existsSync(file)).toBe(false);
    const fromEnv = await runRekey(['keys', 'list'], { PATH: process.env.PATH, REKEY_KEYRING_FILE: file });
    expect(fromEnv.code).toBe(3);
    expect(fromEnv.stderr).toContain(`no keyring at ${file} (REKEY_KEYRING_FILE)`);
  });

  it('Finding: DATABASE_URL=not-a-url is refused, exit 2, saying what a database URL looks like, where it said getaddrinfo ENOTFOUND base; a password is never echoed', async () => {
    const bad = await runRekey(['kek-status'], { PATH: process.env.PATH, DATABASE_URL: 'not-a-url' });
    expect(bad).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'rekey: DATABASE_URL must start with postgres:// or postgresql://: e.g. postgres://user:password@host:5432/database (its value is not shown: it may hold a password)\n',
    });
    const noHost = await runRekey(['kek-status'], { PATH: process.env.PATH, DATABASE_URL: 'postgres:///rekey' });
    expect(noHost.code).toBe(2);
    expect(noHost.stderr).toContain('rekey: DATABASE_URL names no host (postgres://user:password@host:5432/database)');
    const withPassword = await runRekey(['kek-status'], {
      PATH: process.env.PATH,
      DATABASE_URL: 'postgres://u:hunter2@/db',
    });
    expect(withPassword.code).toBe(2);
    expect(withPassword.stderr).toContain('rekey: DATABASE_URL is not a URL');
    expect(withPassword.stderr).not.toContain('hunter2');
  });

  it("Finding: a YAML error in REKEY_CONFIG shows the lines up to it and where, with secrets masked, where its excerpt was cut off after 'at line 7, column 5:'", async () => {
    const file = path.join(scratch, 'rekey.yaml');
    fs.writeFileSync(
      file,
      [
        'targets:',
        '  billing:',
        '    preset: talos',
        '    database:',
        '      url: postgres://billing:s3cret-pass@db.internal:5432/billing',
        '    id: [secret_id',
        '    table: billing.secrets',
        '',
      ].join('\n'),
    );
    const refused = await runRekey(['kek-status', '--target', 'billing'], {
      PATH: process.env.PATH,
      DATABASE_URL: SOME_DATABASE,
      REKEY_CONFIG: file,
    });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(
      [
        `rekey: ${file} is not valid YAML or JSON: Flow sequence in block collection must be sufficiently indented and end with a ] at line 7, column 5`,
        '  4 |     database:',
        '  5 |       url: postgres://billing:***@db.internal:5432/billing',
        '  6 |     id: [secret_id',
        '  7 |     table: billing.secrets',
        '    |     ^',
        '',
      ].join('\n'),
    );
  });

  it('Finding: rotate --help shows the default of every option that has one', async () => {
    const help = await runRekey(['rotate', '--help'], { PATH: process.env.PATH });
    expect(help.code).toBe(0);
    const text = help.stdout.replace(/\s+/g, ' ');
    for (const [option, shown] of [
      ['--target <name>', '(env: REKEY_TARGET, else REKEY_DEFAULT_TARGET; default: rekey)'],
      ['--batch-size <n>', 'rows per batch (default: 2000)'],
      ['--parallelism <n>', 'slices rewrapped at once (default: 2)'],
      ['--grace <duration>', '(default: "7d")'],
      ['--restore-window <duration>', 'before it is destroyed (default: 30d)'],
      ['--confirm-timeout <duration>', 'or a confirmation (default: 3d)'],
    ]) {
      expect(text).toContain(option);
      expect(text).toContain(shown);
    }
  });

  it('Finding: keys claim --help named only AWS KMS and Vault Transit keys, where claim works on Vault KV and Secrets Manager secrets too (docs/04, docs/06): it names all four and their fingerprints', async () => {
    const help = await runRekey(['keys', 'claim', '--help'], { PATH: process.env.PATH });
    expect(help.code).toBe(0);
    const text = help.stdout.replace(/\s+/g, ' ');
    for (const store of ['AWS KMS key', 'Vault Transit key', 'Vault KV secret', 'Secrets Manager secret'])
      expect(text).toContain(store);
    expect(text).toContain('kcv1:… for Vault KV and Secrets Manager');
  });

  it("Finding: with --json an error was still the text line 'rekey: …', which a script that reads JSON cannot parse: it is one JSON line on stderr, {error, message, exit}, error the admin API's code for the kind; nothing on stdout", async () => {
    const missing = path.join(os.tmpdir(), `rekey-no-keyring-${process.pid}`, 'keyring.json');
    for (const [args, env, expected] of [
      [
        ['--json', 'keys', 'list', '--keyring', missing],
        {},
        {
          error: 'not_found',
          kind: 'not-found',
          message: `no keyring at ${missing}: check the path, or create it with 'rekey keys generate --keyring ${missing}'`,
          exit: 3,
        },
      ],
      [
        ['--json', 'kek-status'],
        { DATABASE_URL: 'not-a-url' },
        {
          error: 'bad_request',
          kind: 'invalid',
          message: expect.stringContaining('DATABASE_URL must start with postgres://') as unknown,
          exit: 2,
        },
      ],
    ] as const) {
      const result = await runRekey([...args], { PATH: process.env.PATH, ...env });
      expect({ code: result.code, stdout: result.stdout }).toEqual({ code: expected.exit, stdout: '' });
      expect(result.stderr.endsWith('\n') && result.stderr.trim().split('\n')).toHaveLength(1);
      expect(JSON.parse(result.stderr)).toEqual(expected);
    }
    // Without --json, the line as before.
    const text = await runRekey(['keys', 'list', '--keyring', missing], { PATH: process.env.PATH });
    expect(text.stderr).toMatch(/^rekey: no keyring at /);
  });

  it('Finding: the worker and the admin API answer --help with every environment variable they read and its default, where they had no --help', () => {
    const worker = node('worker.js', ['--help'], {});
    const admin = node('admin/main.js', ['--help'], {});
    expect([worker.status, admin.status]).toEqual([0, 0]);
    expect(worker.stdout).toMatch(/^rekey worker: /);
    expect(admin.stdout).toMatch(/^rekey admin API: /);
    const listed = new Map(ENVIRONMENT.map((v) => [v.name, v]));
    const missing: string[] = [];
    for (const name of variablesRead()) {
      const as = documentedAs(name, new Set(listed.keys()));
      const documented = as === undefined ? undefined : listed.get(as);
      if (!documented) {
        missing.push(name);
        continue;
      }
      if (documented.readBy.includes('worker')) expect(worker.stdout).toContain(`  ${documented.name} `);
      if (documented.readBy.includes('admin')) expect(admin.stdout).toContain(`  ${documented.name} `);
    }
    expect(missing).toEqual([]);
    expect(worker.stdout).toMatch(
      / {2}REKEY_METRICS_PORT +the port of \/metrics \(0: any free port\) \(default: 9464\)/,
    );
    expect(admin.stdout).toMatch(
      / {2}REKEY_ADMIN_HOST +the interface the admin API listens on \(default: 127\.0\.0\.1\)/,
    );
  });

  it('Finding: a metrics port in use stops the worker with one line naming REKEY_METRICS_PORT, where it crashed with a stack trace', async () => {
    const holder = http.createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const { port } = holder.address() as AddressInfo;
    try {
      const worker = node('worker.js', [], {
        DATABASE_URL: SOME_DATABASE,
        REKEY_METRICS_PORT: String(port),
        REKEY_TEMPORAL_METRICS_PORT: '0',
      });
      expect(worker.status).toBe(1);
      expect(worker.stderr).toBe(
        `rekey worker: REKEY_METRICS_PORT=${port}: port ${port} on 127.0.0.1 is in use by another process: set REKEY_METRICS_PORT to a free port (0 picks one)\n`,
      );
    } finally {
      holder.close();
    }
  });

  it('Finding: /metrics listens on loopback by default, as the admin API does, where it listened on every interface; REKEY_METRICS_HOST changes it', async () => {
    const metrics = new RekeyMetrics();
    const loopback = await serveMetrics(metrics, { port: 0 });
    const everywhere = await serveMetrics(metrics, { port: 0, host: '0.0.0.0' });
    try {
      expect((loopback.address() as AddressInfo).address).toBe('127.0.0.1');
      expect((everywhere.address() as AddressInfo).address).toBe('0.0.0.0');
    } finally {
      loopback.close();
      everywhere.close();
    }
    const compose = fs.readFileSync(path.join(projectRoot, 'docker-compose.yml'), 'utf8');
    expect(compose).toContain('REKEY_METRICS_HOST: 0.0.0.0'); // Prometheus scrapes the container from outside it
  });

  it('Finding: a malformed REKEY_WEB_UI_URL is refused before a command does anything, exit 2 (it was read only when a link was printed)', async () => {
    const refused = await runRekey(['rotate', '--from', 'v1', '--to', 'v2'], {
      PATH: process.env.PATH,
      REKEY_WEB_UI_URL: 'temporal-ui:8080',
    });
    expect(refused).toEqual({
      code: 2,
      stdout: '',
      stderr:
        "rekey: REKEY_WEB_UI_URL must be the Temporal Web UI's http(s) address, such as https://temporal.example.com (got 'temporal-ui:8080')\n",
    });
  });
});
