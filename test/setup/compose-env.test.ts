// Finding 10 of "Safety": the documented compose setup crash-looped with the minimal .env (only v1), because
// `REKEY_KEK_v2: ${REKEY_KEK_v2:-}` reaches the worker as an empty string. No Docker engine here: the worker and the
// admin API run as the compose file's containers would, with exactly its environment, resolved from a minimal .env
// by compose's own substitution rules. Only what names a host or a port is pointed at this machine's servers.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { AppInstances } from '../../src/store/app-instances';
import { projectRoot } from '../../src/project-paths';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { createDevServerEnv, within } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

/** The minimal .env of the compose file's header: one KEK, its id, the admin token, the database password. */
const DOT_ENV = {
  POSTGRES_PASSWORD: 'compose-password',
  REKEY_CURRENT_KEK_ID: 'v1',
  REKEY_KEK_v1: randomBytes(32).toString('base64url'),
  REKEY_ADMIN_TOKEN: randomBytes(24).toString('base64url'),
};

/** Compose's interpolation: ${VAR:?message} (set and non-empty, or fail), ${VAR:-default}, ${VAR}. */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}/g,
    (_, name: string, op?: string, arg?: string) => {
      const set = vars[name];
      if (op === ':?' && !set) throw new Error(`compose would refuse to start: ${arg}`);
      if (op === ':-' && !set) return arg ?? '';
      return set ?? '';
    },
  );
}

function composeEnvironment(service: string): Record<string, string> {
  const compose = parse(fs.readFileSync(path.join(projectRoot, 'docker-compose.yml'), 'utf8')) as {
    services: Record<string, { environment: Record<string, string> }>;
  };
  const environment = compose.services[service]?.environment;
  if (!environment) throw new Error(`docker-compose.yml has no service ${service}`);
  return Object.fromEntries(Object.entries(environment).map(([k, v]) => [k, interpolate(String(v), DOT_ENV)]));
}

interface Running {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

function start(script: string, env: Record<string, string>): Running {
  const child = spawn(process.execPath, [path.join(projectRoot, 'dist', 'src', script)], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return { child, output: () => output, exited: new Promise((resolve) => child.on('exit', resolve)) };
}

/**
 * Waits until `check` holds, failing at once if the process exits (with its output), or after 90 s: a worker builds
 * its workflow bundle when it starts, which a loaded machine can take a good part of a minute to do.
 */
function until<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, running: Running) {
  return eventually(what, check, {
    within: 90_000,
    failIf: () => (running.child.exitCode !== null ? `exited with ${running.child.exitCode}` : undefined),
    describe: () => `output: ${running.output()}`,
  });
}

describe('the compose services, started with exactly their compose environment', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await env?.teardown();
    await db?.drop();
  });

  /** The service's compose environment, with its host names and ports pointed at this machine's servers. */
  function hereFor(service: string, extra: Record<string, string> = {}): Record<string, string> {
    const environment = composeEnvironment(service);
    expect(environment.DATABASE_URL).toBe('postgres://rekey:compose-password@postgresql:5432/rekey');
    expect(environment.TEMPORAL_ADDRESS).toBe('temporal:7233');
    return { ...environment, DATABASE_URL: db.url, TEMPORAL_ADDRESS: env.address, ...extra };
  }

  it('Finding 10: the worker and the admin API start with the minimal .env (only v1), where REKEY_KEK_v2 is empty', async () => {
    const workerEnv = hereFor('rekey-worker', { REKEY_METRICS_PORT: '0', REKEY_TEMPORAL_METRICS_PORT: '0' });
    expect(workerEnv.REKEY_KEK_v2).toBe('');
    const worker = start('worker.js', workerEnv);
    // Port 0: it listens on any free port and logs where.
    const admin = start('admin/main.js', hereFor('rekey-admin', { REKEY_ADMIN_PORT: '0' }));
    try {
      await until('the worker started', () => worker.output().includes('rekey worker started'), worker);
      expect(worker.output()).toContain('"id":"v1"');
      // Its metrics, where its start line says they are (REKEY_METRICS_PORT 0: any free port).
      const metricsUrl = /"metricsUrl":"(http:\/\/[^"]+)"/.exec(worker.output())?.[1];
      expect(metricsUrl, worker.output()).toMatch(/^http:\/\/0\.0\.0\.0:\d+\/metrics$/);
      const metrics = await fetch(metricsUrl!.replace('0.0.0.0', '127.0.0.1'));
      expect(metrics.status).toBe(200);
      expect(await metrics.text()).toContain('rekey_deks_rewrapped_total');
      // It is part of the fleet of rekey's own table, with the fingerprint of the one key it holds.
      const fingerprint = await fingerprintIn(new EnvKeyProvider(DOT_ENV, 'REKEY'), 'v1');
      const fleet = await new AppInstances(db.pool, 'rekey').live(60_000);
      expect(fleet).toEqual([
        expect.objectContaining({ role: 'worker', unwrapKekIds: ['v1'], kekFingerprints: { v1: fingerprint } }),
      ]);
      const adminUrl = await until(
        'the admin API listening',
        () => /rekey admin API listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(admin.output())?.[1],
        admin,
      );
      expect((await fetch(`${adminUrl}/healthz`)).ok).toBe(true);
      const status = await fetch(`${adminUrl}/admin/v1/secrets/kek-status`, {
        headers: { authorization: `Bearer ${DOT_ENV.REKEY_ADMIN_TOKEN}` },
      });
      expect(status.status).toBe(200);
      expect(await status.json()).toMatchObject({ target: 'rekey' });
    } finally {
      worker.child.kill('SIGTERM');
      admin.child.kill('SIGTERM');
      await Promise.all([worker.exited, admin.exited]);
    }
  }, 240_000);

  it('Finding 11: a worker exits promptly on SIGTERM when the Temporal server is gone', async () => {
    const own = await createDevServerEnv();
    const worker = start(
      'worker.js',
      hereFor('rekey-worker', {
        TEMPORAL_ADDRESS: own.address,
        REKEY_METRICS_PORT: '0',
        REKEY_TEMPORAL_METRICS_PORT: '0',
      }),
    );
    try {
      await until('the worker started', () => worker.output().includes('rekey worker started'), worker);
      await own.teardown();
      worker.child.kill('SIGTERM');
      // Before the fix it never exited (its shutdown waited on the gone server). A worker exits in about a second;
      // 30 s is generous for a loaded machine and well inside the test's timeout.
      await within(worker.exited, 30_000, () => `the worker still runs 30 s after SIGTERM; output: ${worker.output()}`);
    } finally {
      worker.child.kill('SIGKILL');
      await worker.exited;
    }
  });
});
