// Issue 25, "One status, the same on every surface": what the CLI (`rekey status`), the admin API (`rotation-status`)
// and the metrics say of one run, read from the built CLI and the API against the dev server and PostgreSQL.
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { History } from '../../src/client/history';
import type { RotationStatus } from '../../src/client/rotations';
import type { ScheduleSummary } from '../../src/client/schedules';
import { RekeyMetrics } from '../../src/observability/metrics';
import { AppInstances } from '../../src/store/app-instances';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { rotationWorkflowId } from '../../src/rotation/identity';
import { TargetRuntimes } from '../../src/targets/runtime';
import type { rotateKek, RotationReport } from '../../src/workflows';
import type { CliResult } from '../helpers/cli';
import type { TestDatabase } from '../helpers/database';
import { startKeyringWorker, type KeyringWorker } from '../helpers/keyring-worker';
import { eventually } from '../helpers/eventually';
import { ROTATES_WHEN_TRIGGERED, scheduledRun } from '../helpers/schedules';
import {
  createDevServerEnv,
  progressUntil,
  resultWithin,
  within,
  type OwnServerEnvironment,
} from '../helpers/temporal';

const TENANTS = 500;
const TOKEN = 'run-status-token-0123456789';

describe('one status, the same on every surface: rekey status, rotation-status and the metrics of one run', () => {
  let env: OwnServerEnvironment;
  let fixture: KeyringWorker;
  let db: TestDatabase;
  let api: FastifyInstance;
  let targets: TargetRuntimes;
  const metrics = new RekeyMetrics();
  const taskQueue = 'rekey-run-status';

  const rekey = (...args: string[]): Promise<CliResult> => fixture.rekey(...args);

  /**
   * `rekey --json status`, parsed; fails with what the CLI said if it did not answer with `code` (the README's exit
   * codes: 0 for a run going or done, 1 for one aborted).
   */
  async function cliStatus(reference: string, code = 0): Promise<RotationStatus> {
    const result = await rekey('--json', 'status', reference);
    expect(result, result.stderr).toMatchObject({ code });
    return JSON.parse(result.stdout) as RotationStatus;
  }

  async function apiStatus(reference: string): Promise<Record<string, unknown> & { run_status: RunStatusBody }> {
    const response = await api.inject({
      method: 'GET',
      url: `/admin/v1/secrets/rotation-status/${encodeURIComponent(reference)}`,
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(response.statusCode, response.body).toBe(200);
    return response.json();
  }

  /** Starts a rotation of rekey's own table with the built CLI; its op id. */
  async function rotate(...args: string[]): Promise<string> {
    const started = await rekey('rotate', ...args);
    expect(started, started.stderr).toMatchObject({ code: 0 });
    return /started rotation (\S+)/.exec(started.stdout)![1]!;
  }

  /** The workflow id rekey's own rotations run under in this database (its keyspace's), and as a pattern. */
  let rotationId: string;
  const rotationIdPattern = () => rotationId.replaceAll('.', '\\.');
  const handle = () => env.client.workflow.getHandle<typeof rotateKek>(rotationId);

  beforeAll(async () => {
    env = await createDevServerEnv();
    fixture = await startKeyringWorker(env, {
      taskQueue,
      kekIds: ['v1', 'v2', 'v3', 'v4'],
      tenants: TENANTS,
      metrics,
      scratchPrefix: 'rekey-run-status-',
    });
    ({ db, targets } = fixture);
    rotationId = rotationWorkflowId(BUILTIN_TARGET, await targets.keyspace(BUILTIN_TARGET));
    api = await fixture.adminApi(TOKEN);
  });

  afterAll(async () => {
    await fixture?.stop();
    await env?.teardown();
  });

  it('an aborted run reads Aborted, with its reason and 0% (no row moved), the same in rekey status and rotation-status', async () => {
    // An instance that cannot unwrap with v2 holds the run at the fleet gate, before any row moves.
    const instances = new AppInstances(db.pool, BUILTIN_TARGET);
    await instances.announce({ instanceId: 'old-gw', unwrapKekIds: ['v1'], wrapKekId: 'v1', kekFingerprints: {} });
    try {
      const opId = await rotate('--from', 'v1', '--to', 'v2', '--grace', '1s');
      await progressUntil(handle(), (p) => p.waiting?.kind === 'fleet');
      const waiting = await cliStatus(opId);
      expect(waiting.run).toMatchObject({ state: 'waiting', label: 'Waiting for the fleet', percent: 0 });
      const aborted = await rekey('abort', opId, '--reason', 'change freeze');
      expect(aborted, aborted.stderr).toMatchObject({ code: 0 });
    } finally {
      await instances.withdraw('old-gw');
    }
    const reason = "change freeze; both 'v1' and 'v2' still unwrap, nothing was retired; no row moved";

    // Before: `completed … done` in the CLI; `status: "failed"` with `percent: 100` in the API.
    const human = await rekey('status', 'rekey');
    expect(human.stdout.split('\n')[0]).toMatch(
      new RegExp(`^rotation ${rotationIdPattern()}@\\S+: Aborted: ${reason}$`),
    );
    expect(human.stdout).not.toMatch(/completed|100%/);

    const cli = await cliStatus('rekey', 1);
    expect(cli.run).toMatchObject({ state: 'aborted', label: 'Aborted', reason, percent: 0, ended: true });
    const body = await apiStatus(cli.opId);
    expect(body).toMatchObject({
      status: 'failed', // Talos's three states: an aborted rotation did not complete
      percent: 0,
      last_error: reason,
      run_status: { state: 'aborted', label: 'Aborted', reason, line: `Aborted: ${reason}`, percent: 0, ended: true },
    });
    expect(body.run_status).toMatchObject({ state: cli.run.state, line: cli.run.line, percent: cli.run.percent });
  });

  it('the grace countdown is counted from the moment of display: two reads count down by the time between them', async () => {
    const opId = await rotate('--from', 'v1', '--to', 'v2', '--grace', '1h');
    const inGrace = await progressUntil(handle(), (p) => p.phase === 'grace' && p.graceEndsAt !== undefined);
    const graceEndsAt = inGrace.graceEndsAt!;
    const endsAt = new Date(graceEndsAt).toISOString();

    const read = async () => {
      const before = Date.now();
      const cli = await cliStatus(opId);
      const human = (await rekey('status', opId)).stdout;
      const api = await apiStatus(opId);
      return { before, after: Date.now(), cli, human, api };
    };
    const first = await read();
    // Let the clock move on (the run itself takes no step in grace: nothing updates its progress meanwhile).
    await within(new Promise((resolve) => setTimeout(resolve, 3_000)), 10_000, () => 'the timer did not fire');
    const second = await read();

    for (const { before, after, cli, human, api } of [first, second]) {
      expect(cli.run.grace?.endsAt).toBe(endsAt);
      // Counted from the moment of the read, to the second.
      const remaining = cli.run.grace!.remainingSeconds;
      expect(remaining).toBeLessThanOrEqual(Math.ceil((graceEndsAt - before) / 1000));
      expect(remaining).toBeGreaterThanOrEqual(Math.floor((graceEndsAt - after) / 1000) - 1);
      expect(human).toContain(`'v1' retires at ${endsAt} (in `);
      expect(api).toMatchObject({ grace_ends_at: endsAt, run_status: { state: 'running', step: 'grace' } });
      expect(api.grace_remaining_seconds as number).toBeLessThanOrEqual(Math.ceil((graceEndsAt - before) / 1000));
    }
    const elapsed = (second.before - first.after) / 1000;
    const counted = first.cli.run.grace!.remainingSeconds - second.cli.run.grace!.remainingSeconds;
    expect(counted).toBeGreaterThanOrEqual(Math.floor(elapsed) - 1);
    expect(first.api.grace_remaining_seconds as number).toBeGreaterThan(second.api.grace_remaining_seconds as number);

    expect((await rekey('grace', opId, '--end-now')).code).toBe(0);
    const report = await resultWithin<RotationReport>(handle());
    expect(report.outcome).toBe('completed');
  });

  it('a step that keeps failing shows as Retrying in rekey status, rotation-status and the metrics, with the step, its last error and its attempt count', async () => {
    // The registry refuses every promotion (as a database under maintenance would): promoteKek fails and is retried.
    await db.pool.query(`
      CREATE FUNCTION rekey.refuse_promotion() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'the registry is in maintenance: promotions are refused'; END $$;
      CREATE TRIGGER refuse_promotion BEFORE UPDATE ON rekey.keks FOR EACH ROW
        WHEN (NEW.state = 'active' AND OLD.state <> 'active') EXECUTE FUNCTION rekey.refuse_promotion();`);
    let opId: string;
    try {
      opId = await rotate('--from', 'v2', '--to', 'v3', '--grace', '1s');
      let last: RotationStatus | undefined;
      const status = await eventually(
        "'rekey status' showing promote's third attempt",
        async () => {
          last = await cliStatus(opId);
          return (last.run.retrying?.attempt ?? 0) >= 3 && last;
        },
        { every: 200, describe: () => `last status: ${JSON.stringify(last?.run)}` },
      );
      // Before: `promote` and nothing else; the error and the retries only in `temporal workflow describe`.
      expect(status.run).toMatchObject({
        state: 'retrying',
        label: 'Retrying',
        step: 'promote',
        retrying: {
          step: 'promote',
          activity: 'promoteKek',
          lastError: expect.stringContaining('promotions are refused') as unknown,
        },
      });
      expect(status.run.retrying!.attempt).toBeGreaterThanOrEqual(3);

      const human = (await rekey('status', opId)).stdout;
      expect(human.split('\n')[0]).toMatch(
        /^rotation \S+: Retrying: promote \(promoteKek\) failed \d+ time\(s\), attempt \d+: .*promotions are refused/,
      );
      expect(human).toMatch(/ {2}retrying: promote step promoteKek, attempt \d+; last error: .*promotions are refused/);

      const body = await apiStatus(opId);
      expect(body).toMatchObject({
        status: 'running',
        last_error: expect.stringContaining('promotions are refused') as unknown,
        run_status: { state: 'retrying', step: 'promote' },
        retrying: { step: 'promote', activity: 'promoteKek' },
      });
      expect((body.retrying as { attempt: number }).attempt).toBeGreaterThanOrEqual(3);

      const scraped = await metrics.registry.getSingleMetricAsString('rekey_run_status');
      expect(scraped).toContain(
        `rekey_run_status{kind="rotation",workflow_id="${rotationId}",target="rekey",status="retrying"} 1`,
      );
      expect(scraped).toContain(
        `rekey_run_status{kind="rotation",workflow_id="${rotationId}",target="rekey",status="running"} 0`,
      );
    } finally {
      await db.pool.query('DROP TRIGGER refuse_promotion ON rekey.keks; DROP FUNCTION rekey.refuse_promotion()');
    }
    // Once the registry takes writes again, the next attempt promotes and the run goes on to its end.
    const report = await resultWithin<RotationReport>(handle(), 90_000);
    expect(report).toMatchObject({ outcome: 'completed', from: 'v2', to: 'v3' });
    expect((await cliStatus(opId)).run).toMatchObject({ state: 'succeeded' });
  });

  it('history lists a run still going and one Temporal terminated (from its visibility) beside the runs rekey recorded, newest first, in the same words', async () => {
    const instances = new AppInstances(db.pool, BUILTIN_TARGET);
    await instances.announce({ instanceId: 'old-gw', unwrapKekIds: ['v3'], wrapKekId: 'v3', kekFingerprints: {} });
    try {
      const opId = await rotate('--from', 'v3', '--to', 'v4', '--grace', '1s');
      await progressUntil(handle(), (p) => p.waiting?.kind === 'fleet');
      const history = async () => {
        const listed = await rekey('--json', 'history');
        expect(listed, listed.stderr).toMatchObject({ code: 0 });
        return JSON.parse(listed.stdout) as History;
      };
      const whileRunning = await history();
      expect(whileRunning.runs[0]).toMatchObject({
        opId,
        kind: 'rotation',
        from: 'v3',
        to: 'v4',
        state: 'waiting',
        label: 'Waiting for the fleet',
        source: 'temporal',
      });
      expect(whileRunning.runs[0]!.endedAt).toBeUndefined();
      // The three runs of the tests above, as each recorded its end: newest first.
      expect(whileRunning.runs.slice(1).map((r) => [r.from, r.to, r.state, r.source])).toEqual([
        ['v2', 'v3', 'succeeded', 'rekey'],
        ['v1', 'v2', 'succeeded', 'rekey'],
        ['v1', 'v2', 'aborted', 'rekey'],
      ]);

      await handle().terminate('operator cleanup');
      const afterwards = await history();
      expect(afterwards.runs[0]).toMatchObject({
        opId,
        state: 'failed',
        reason: expect.stringMatching(/^terminated in Temporal \(operator cleanup\)/) as unknown,
        source: 'temporal',
      });
      expect(afterwards.runs[0]!.endedAt).toBeDefined();
      expect(afterwards.runs).toHaveLength(4);
    } finally {
      await instances.withdraw('old-gw');
    }
  });

  it('schedule list shows each run of a schedule with the rotation it started, in the words of rekey status', async () => {
    const created = await rekey('schedule', 'create', '--id', 'rekey-status-test', ...ROTATES_WHEN_TRIGGERED);
    expect(created, created.stderr).toMatchObject({ code: 0 });
    try {
      expect((await rekey('schedule', 'trigger', 'rekey-status-test')).code).toBe(0);
      // The launcher ends once it has started the rotation: from then on, the rotation's id names that run.
      expect(await scheduledRun(env.client, 'rekey-status-test')).toMatchObject({ started: true });
      const report = await resultWithin<RotationReport>(handle(), 90_000);
      expect(report.outcome).toBe('completed');

      const listed = JSON.parse((await rekey('--json', 'schedule', 'list')).stdout) as ScheduleSummary[];
      const runs = listed.find((s) => s.scheduleId === 'rekey-status-test')!.runs;
      expect(runs).toEqual([
        expect.objectContaining({
          rotation: expect.stringMatching(new RegExp(`^${rotationIdPattern()}@`)) as unknown,
          state: 'succeeded',
          line: `Succeeded: '${report.from}' → '${report.to}': ${TENANTS} of ${TENANTS} rows moved, verified; '${report.from}' retired`,
        }),
      ]);
      const human = (await rekey('schedule', 'list')).stdout.split('\n');
      const at = human.findIndex((line) => line.startsWith('rekey-status-test: every 90d'));
      expect(human[at + 1]).toBe(`  ${runs[0]!.at}  ${runs[0]!.rotation}: ${runs[0]!.line}`);
    } finally {
      await rekey('schedule', 'delete', 'rekey-status-test');
    }
  });
});

interface RunStatusBody {
  state: string;
  label: string;
  reason: string;
  line: string;
  percent: number;
  ended: boolean;
}
