import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { RekeyMetrics, serveMetrics } from '../../src/observability/metrics';
import { projectRoot } from '../../src/project-paths';
import { AppInstances } from '../../src/store/app-instances';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import type { RotationReport, rotateKek } from '../../src/workflows';
import type { CliResult } from '../helpers/cli';
import type { TestDatabase } from '../helpers/database';
import { startKeyringWorker, type KeyringWorker } from '../helpers/keyring-worker';
import { eventually } from '../helpers/eventually';
import { rotationIdIn } from '../helpers/keyspace';
import { ROTATES_WHEN_TRIGGERED, scheduledRun } from '../helpers/schedules';
import { createDevServerEnv, progressUntil, resultWithin } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

const TENANTS = 3_000;

describe('the rekey CLI, the quarterly schedule and the metrics, against the dev server and PostgreSQL', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let keyring: FileKeyring;
  let keyringFile: string;
  let scratch: string;
  let fixture: KeyringWorker;
  const metrics = new RekeyMetrics();
  const taskQueue = 'rekey-cli-test';

  /** Runs the built CLI as a user would; never throws, returns what the user would see. */
  const rekey = (...args: string[]): Promise<CliResult> => fixture.rekey(...args);

  beforeAll(async () => {
    env = await createDevServerEnv();
    fixture = await startKeyringWorker(env, {
      taskQueue,
      kekIds: ['v1', 'v2'],
      tenants: TENANTS,
      metrics,
      metricsInWorker: true,
      scratchPrefix: 'rekey-cli-',
    });
    ({ db, keyring, keyringFile, scratch } = fixture);
  });

  afterAll(async () => {
    await fixture?.stop();
    await env?.teardown();
  });

  it("rotate --dry-run prints the rotate-kek counters (Tenants scanned, Migrated, Already done, Skipped) and rekey's, and writes nothing", async () => {
    const human = await rekey('rotate', '--from', 'v1', '--to', 'v2', '--dry-run');
    expect(human).toMatchObject({ code: 0, stderr: '' });
    const n = TENANTS.toLocaleString('en-US');
    expect(human.stdout).toContain(
      `Tenants scanned: ${n}  Migrated: ${n}  Already done: 0  Skipped: 0  Unreadable: 0  Relabelled: 0  CAS conflicts: 0`,
    );

    const json = await rekey('--json', 'rotate', '--from', 'v1', '--to', 'v2', '--dry-run');
    const parsed = JSON.parse(json.stdout) as {
      dryRun: boolean;
      report: { outcome: string; counters: { rewrapped: number } };
    };
    expect(parsed).toMatchObject({ dryRun: true, report: { outcome: 'dry-run', counters: { rewrapped: TENANTS } } });
    expect(await new TenantDekStore(db.pool).countOnKek('v1')).toBe(TENANTS);
  });

  it('bad input exits 2 with one line that says what to fix', async () => {
    for (const [args, message] of [
      [['rotate', '--from', 'v1', '--to', 'v1'], "rekey: from and to are both 'v1': rotate to a different KEK"],
      [
        ['rotate', '--from', 'v1', '--to', 'v2', '--grace', 'soon'],
        "error: option '--grace <duration>' argument 'soon' is invalid",
      ],
      [['grace', 'rekey'], 'rekey: give exactly one of --extend <duration> or --end-now'],
      [
        ['rotate', '--from', 'v1', '--from-version', '1', '--to', 'v2'],
        'rekey: give --from or --from-version, not both',
      ],
      [['rotate', '--to', 'v2'], 'rekey: --from <id> (or --from-version <n>) is required'],
    ] as const) {
      const result = await rekey(...args);
      expect(result.code).toBe(2);
      expect(result.stderr.trim().split('\n')[0]).toContain(message);
    }
  });

  it('an unknown rotation exits 3', async () => {
    const result = await rekey('status', 'no-such-rotation');
    expect(result).toMatchObject({ code: 3, stderr: "rekey: no rotation 'no-such-rotation'\n" });
  });

  it('rotate --wait runs to the end; a second rotate of the same KEKs is decided by the registry: already done; status and kek-status agree; metrics count it', async () => {
    const run = await rekey('rotate', '--from', 'v1', '--to', 'v2', '--grace', '1s', '--wait');
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const opId = /started rotation (\S+)/.exec(run.stdout)?.[1];
    const rotationId = await rotationIdIn(db.pool);
    expect(opId?.startsWith(`${rotationId}@`)).toBe(true);
    expect(run.stdout).toContain(
      `rotation ${opId}: Succeeded: 'v1' → 'v2': ${TENANTS.toLocaleString('en-US')} of ${TENANTS.toLocaleString('en-US')} rows moved, verified; 'v1' retired`,
    );

    const again = await rekey('rotate', '--from', 'v1', '--to', 'v2', '--wait');
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("Nothing to do: already done: 'v1' is retired and 'v2' is the active KEK");

    const status = JSON.parse((await rekey('--json', 'status', opId!)).stdout) as {
      status: string;
      progress: { counters: { rewrapped: number } };
    };
    expect(status).toMatchObject({ status: 'COMPLETED', progress: { counters: { rewrapped: TENANTS } } });

    const kekStatus = JSON.parse((await rekey('--json', 'kek-status')).stdout) as Record<string, unknown>;
    expect(kekStatus).toMatchObject({ target: 'rekey', current_kek_id: 'v2', stale_counts: { v2: TENANTS } });

    const server = await serveMetrics(metrics, { port: 0, host: '127.0.0.1' });
    try {
      const { port } = server.address() as { port: number };
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(text).toMatch(/^rekey_deks_rewrapped_total (\d+)$/m);
      expect(Number(/^rekey_deks_rewrapped_total (\d+)$/m.exec(text)?.[1])).toBeGreaterThan(0);
      expect(text).toContain('rekey_cas_conflicts_total 0');
      expect(text).toContain(`rekey_deks{target="rekey",kek_id="v2",current="true"} ${TENANTS}`);
    } finally {
      server.close();
    }
  });

  it("Finding: rotate --wait with nothing to do printed 'rekey · done' twice (the watch's line while the run records its end, then its status): its end is printed once", async () => {
    // After the test above: 'v1' is retired and 'v2' active, so this run ends in validate with nothing to do.
    const again = await rekey('rotate', '--from', 'v1', '--to', 'v2', '--wait');
    expect(again).toMatchObject({ code: 0, stderr: '' });
    const lines = again.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^rotation \S+: Nothing to do: already done: 'v1' is retired and 'v2' is the active KEK$/);
    expect(lines.filter((line) => line.includes('rekey · done'))).toEqual(['  rekey · done']);
  });

  it('pause answers with how far it got and what it holds before, resume and abort steer a running rotation', async () => {
    // An instance that does not hold the new KEK keeps the run at the fleet gate: the controls below meet it there
    // however fast or slow this machine is (a run left to itself could be past the rewrap before `rekey pause`).
    const instances = new AppInstances(db.pool, BUILTIN_TARGET);
    await instances.announce({ instanceId: 'old-gw', unwrapKekIds: ['v2'], wrapKekId: 'v2', kekFingerprints: {} });
    try {
      const start = await rekey('rotate', '--from', 'v2', '--to', 'new', '--batch-size', '10', '--parallelism', '1');
      expect(start.code).toBe(0);
      const id = /started rotation (\S+)/.exec(start.stdout)?.[1];
      const rotationId = await rotationIdIn(db.pool);
      expect(id?.startsWith(`${rotationId}@`)).toBe(true);
      const handle = env.client.workflow.getHandle<typeof rotateKek>(rotationId);
      await progressUntil(handle, (p) => p.waiting?.kind === 'fleet');
      const paused = await rekey('pause', id!);
      expect(paused.code).toBe(0);
      expect(paused.stdout).toMatch(/^paused at 0%: rekey · promote \(paused\)/);
      const scraped = await metrics.registry.getSingleMetricAsString('rekey_rotation_phase');
      expect(scraped).toContain(`rekey_rotation_phase{workflow_id="${rotationId}",phase="promote"} 1`);
      expect(scraped).toContain(`rekey_rotation_phase{workflow_id="${rotationId}",phase="grace"} 0`);
      // The instance goes away: the gate would let go, and the paused run holds before promoting instead.
      await instances.withdraw('old-gw');
      // The gate polls at 5 s, then 10 s, 20 s …: allow a minute of real time for its next look.
      const held = await progressUntil(handle, (p) => p.heldBefore === 'promote', { withinMs: 60_000 });
      expect((await rekey('status', id!)).stdout).toContain('promote (paused: holds before promote)');
      expect(held.phase).toBe('promote');
      const resumed = await rekey('resume', id!);
      expect(resumed.stdout).toMatch(/^resumed at [\d.]+%/);
      const aborted = await rekey('abort', id!, '--reason', 'test over');
      expect(aborted.code).toBe(0);
      expect(aborted.stdout).toMatch(/aborted: test over; both 'v2' and 'v\d+' still unwrap, nothing was retired/);
      const afterwards = await rekey('pause', id!);
      expect(afterwards).toMatchObject({ code: 4, stderr: `rekey: rotation ${id} is completed, not running\n` });
    } finally {
      await instances.withdraw('old-gw');
    }
  });

  it('keys generate and list show ids and fingerprints, never key bytes', async () => {
    const file = path.join(scratch, 'other-keyring.json');
    const generated = JSON.parse((await rekey('--json', 'keys', '--keyring', file, 'generate')).stdout) as {
      kekId: string;
      fingerprint: string;
    };
    expect(generated).toMatchObject({
      kekId: 'v1',
      fingerprint: expect.stringMatching(/^kcv1:[0-9a-f]{32}$/) as unknown,
    });
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const listed = await rekey('keys', '--keyring', file, 'list');
    expect(listed.stdout.trim()).toBe(`v1           ${generated.fingerprint}`);
    const stored = JSON.parse(fs.readFileSync(file, 'utf8')) as { keks: { key: string }[] };
    expect(listed.stdout).not.toContain(stored.keks[0]!.key);
  });

  it('Finding 4: a schedule run after an abort that followed promotion finishes that rotation instead of promoting a third KEK; a run with nothing to do says so', async () => {
    const created = await rekey('schedule', 'create', '--id', 'rekey-test', ...ROTATES_WHEN_TRIGGERED);
    expect(created).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^created schedule rekey-test\n/) as unknown,
    });
    expect((await rekey('schedule', 'create', '--id', 'rekey-test')).code).toBe(4);
    const listed = JSON.parse((await rekey('--json', 'schedule', 'list')).stdout) as {
      scheduleId: string;
      spec: string;
    }[];
    expect(listed).toContainEqual(expect.objectContaining({ scheduleId: 'rekey-test', spec: 'every 90d' }));

    // The state an abort after promotion leaves: `to` active, `from` decrypt-only and still wrapping DEKs. The
    // previous test aborts v2 → v3 midway; if its rewrap had already finished, make that state here.
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    const deks = new TenantDekStore(db.pool);
    let active = (await registry.active())!.kekId;
    let unfinished: string | undefined;
    for (const kek of await registry.list()) {
      if (kek.state === 'decrypt_only' && (await deks.countOnKek(kek.kekId)) > 0) unfinished = kek.kekId;
    }
    if (unfinished === undefined) {
      const { kekId: next } = await generateKek(keyring);
      await registry.register(next, await fingerprintIn(keyring, next));
      await registry.promote(active, next);
      [unfinished, active] = [active, next];
    }
    const keksBefore = (await registry.list()).length;
    expect((await rekey('schedule', 'trigger', 'rekey-test')).code).toBe(0);
    const launched = await scheduledRun(env.client, 'rekey-test');
    const rotationId = await rotationIdIn(db.pool);
    expect(launched).toMatchObject({ started: true, workflowId: rotationId });
    const report = await env.client.workflow.getHandle<typeof rotateKek>(rotationId).result();
    expect(report).toMatchObject({ outcome: 'completed', from: unfinished, to: active });
    expect((await registry.active())!.kekId).toBe(active);
    expect(await registry.get(unfinished)).toMatchObject({ state: 'retired' });
    expect(await deks.countOnKek(unfinished)).toBe(0);
    expect((await registry.list()).length).toBe(keksBefore); // no third KEK was generated and promoted

    const second = await rekey('schedule', 'create', '--id', 'rekey-young', '--every', '90d', '--min-kek-age', '30d');
    expect(second.code).toBe(0);
    await env.client.schedule.getHandle('rekey-young').trigger();
    expect(await scheduledRun(env.client, 'rekey-young')).toMatchObject({ started: true });
    const nothing = await env.client.workflow.getHandle<typeof rotateKek>(rotationId).result();
    expect(nothing.outcome).toBe('nothing-to-do');
    expect(nothing.note).toMatch(/^nothing to do: KEK '\w+' became active .* ago; rotations are due after 30d 0h$/);

    expect((await rekey('schedule', 'delete', 'rekey-test')).code).toBe(0);
    expect((await rekey('schedule', 'delete', 'rekey-test')).code).toBe(3);

    // With notice: refused when it cannot work; given at once inside its period; shown by schedule list.
    const badUrl = await rekey(
      'schedule',
      'create',
      '--id',
      'rekey-notice',
      '--notify-before',
      '7d',
      '--notify-url',
      'ftp://x',
    );
    expect(badUrl).toMatchObject({ code: 2, stderr: "rekey: --notify-url 'ftp://x' is not an http(s) URL\n" });
    const noticed = await rekey(
      'schedule',
      'create',
      '--id',
      'rekey-notice',
      '--every',
      '90d',
      '--notify-before',
      '90d',
    );
    expect(noticed.code).toBe(0);
    let line = '';
    await eventually(
      "'rekey schedule list' showing the notice as announced",
      async () => {
        line = (await rekey('schedule', 'list')).stdout.split('\n').find((l) => l.startsWith('rekey-notice:')) ?? '';
        return line.includes('announced');
      },
      { describe: () => `last line: ${line}` },
    );
    expect(line).toMatch(
      /^rekey-notice: every 90d; next rotation (\S+); announced \1; rotates target 'rekey' of keyspace [0-9a-f-]{36}\/\S+$/,
    );
    expect((await rekey('schedule', 'delete', 'rekey-notice')).code).toBe(0);
  });

  it('a schedule created before keyspaces (no keyspace in its input) still starts the rotation, under the keyspace its worker resolves', async () => {
    const request: RotationRequest = { target: 'rekey', from: 'current', to: 'new', minKekAge: '30d' };
    await env.client.schedule.create({
      scheduleId: 'rekey-old',
      spec: { intervals: [{ every: '90d' }] },
      action: {
        type: 'startWorkflow',
        workflowType: 'scheduledRotation',
        args: [request],
        taskQueue,
        workflowId: 'kek-rotation-schedule-rekey-old',
      },
    });
    try {
      await env.client.schedule.getHandle('rekey-old').trigger();
      const rotationId = await rotationIdIn(db.pool);
      expect(await scheduledRun(env.client, 'rekey-old')).toMatchObject({ started: true, workflowId: rotationId });
      const report = await env.client.workflow.getHandle<typeof rotateKek>(rotationId).result();
      expect(report.outcome).toBe('nothing-to-do');
    } finally {
      await env.client.schedule.getHandle('rekey-old').delete();
    }
  });

  it('Finding 3: a scheduled rotation to a generated KEK reaches an application that is its own process, which holds it before promotion and wraps with it after', async () => {
    const app = spawn(process.execPath, [path.join(projectRoot, 'dist', 'test', 'helpers', 'app-process.js')], {
      env: { PATH: process.env.PATH, DATABASE_URL: db.url, REKEY_KEYRING_FILE: keyringFile, APP_INSTANCE_ID: 'gw-1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    app.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    app.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => app.on('exit', resolve));
    try {
      await eventually('the application process ready', () => out.includes('ready'), {
        failIf: () => (app.exitCode !== null ? `it exited with ${app.exitCode}` : undefined),
        describe: () => `its stderr: ${err}`,
      });
      const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
      const from = (await registry.active())!.kekId;
      const created = await rekey(
        'schedule',
        'create',
        '--id',
        'rekey-q',
        '--every',
        '90d',
        '--grace',
        '1s',
        '--min-kek-age',
        '0s',
      );
      expect(created.code).toBe(0);
      await env.client.schedule.getHandle('rekey-q').trigger();
      const rotationId = await rotationIdIn(db.pool);
      expect(await scheduledRun(env.client, 'rekey-q')).toMatchObject({ started: true, workflowId: rotationId });
      const handle = env.client.workflow.getHandle<typeof rotateKek>(rotationId);
      // Before the fix the run sat at "promote · fleet 0/1 ready" until its fleet timeout (1 h).
      const report = await resultWithin<RotationReport>(handle);
      expect(report).toMatchObject({ outcome: 'completed', from });
      const to = report.to;
      expect(to).not.toBe(from);
      expect(await registry.get(from)).toMatchObject({ state: 'retired' });
      // The application process learnt the generated KEK on its own and now wraps new tenants with it.
      const fleet = await new AppInstances(db.pool, BUILTIN_TARGET).live(60_000);
      expect(fleet.find((i) => i.instanceId === 'gw-1')).toMatchObject({
        wrapKekId: to,
        kekFingerprints: expect.objectContaining({ [to]: await fingerprintIn(keyring, to) }) as unknown,
      });
      const wrappedWithTo = async () =>
        Number(
          (
            await db.pool.query<{ n: string }>(
              `SELECT count(*) AS n FROM rekey.tenant_deks WHERE tenant_id LIKE 'app-tenant-%' AND kek_id = $1`,
              [to],
            )
          ).rows[0]?.n,
        );
      await eventually(
        `the application wrapping a new tenant's DEK with '${to}'`,
        async () => (await wrappedWithTo()) > 0,
      );
    } finally {
      app.kill('SIGTERM');
      await exited;
      await rekey('schedule', 'delete', 'rekey-q');
    }
    const stats = JSON.parse(out.trim().split('\n').pop()!) as { tenants: number; errors: number };
    expect(stats.tenants).toBeGreaterThan(0);
    expect({ errors: stats.errors, stderr: err }).toEqual({ errors: 0, stderr: expect.any(String) as unknown });
  });
});
