// Issue 25, schedules: a schedule that could never run is refused when it is created; a run asks whether a rotation
// is due before anything else; `schedule list` says what came of each run.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ScheduleNotFoundError } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { seedTenants } from '../../src/dev/tenants';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRekey, runRekeyAt, type CliResult } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { createTalosSchema } from '../helpers/talos';
import { ROTATES_WHEN_TRIGGERED, scheduledRun } from '../helpers/schedules';
import { createDevServerEnv, resultWithin } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

describe('rotation schedules: refused at create when they cannot run, each run with its outcome', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let keyring: FileKeyring;
  let served: ServedWorker;
  let targets: TargetRuntimes;
  const taskQueue = 'rekey-schedule-runs';
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-schedules-'));
  const keyringFile = path.join(scratch, 'keyring.json');

  function rekey(...args: string[]): Promise<CliResult> {
    return runRekeyAt(env.address, taskQueue, args, {
      DATABASE_URL: db.url,
      REKEY_KEYRING_FILE: keyringFile,
      REKEY_WEB_UI_URL: 'https://temporal.example.com/',
    });
  }

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await createTalosSchema(db.pool);
    keyring = FileKeyring.open(keyringFile, { create: true });
    await generateKek(keyring, 'v1');
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keyring, 'v1'));
    await seedTenants({ db: db.pool, keys: keyring, kekId: 'v1', count: 200 });
    // rekey's own table with a keyring file (rekey generates KEKs there); Talos with its TALOS_KEK_<id> (it cannot).
    targets = new TargetRuntimes({
      db: db.pool,
      keys: keyring,
      env: { TALOS_KEK_v1: randomBytes(32).toString('base64url') },
    });
    served = await serveWorker(env, { taskQueue, db: db.pool, keys: keyring, targets, temporal: true });
  });

  afterAll(async () => {
    await served?.stop();
    keyring?.close();
    await db?.drop();
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('Finding: schedule create refuses a target whose key source cannot generate a KEK (env keys), with exit 2 and the reason, and creates no schedule, where the first run used to fail', async () => {
    const refused = await rekey('schedule', 'create', '--id', 'talos-quarterly', '--target', 'talos');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(
      "rekey: target 'talos' takes its KEKs from environment variables TALOS_KEK_<id>, where rekey cannot generate one, and every scheduled run rotates to a newly generated KEK: rotate it by hand (add the new KEK everywhere, then rekey rotate --target talos --from current --to <id>), or give it a key source rekey generates in (a keyring file, AWS Secrets Manager, AWS KMS)\n",
    );
    await expect(env.client.schedule.getHandle('talos-quarterly').describe()).rejects.toThrow(ScheduleNotFoundError);
  });

  it('schedule create refuses, exit 1, when no worker polls the task queue to check it', async () => {
    const refused = await runRekey(
      ['--address', env.address, '--task-queue', 'nobody-polls-this', 'schedule', 'create', '--id', 'orphan'],
      // The database that names the target's keyspace, which the schedule records.
      { PATH: process.env.PATH, DATABASE_URL: db.url },
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      "rekey: no worker polls task queue 'nobody-polls-this' (namespace default): start the worker of target 'rekey' first; a schedule is checked by it, and each run needs it\n",
    );
    await expect(env.client.schedule.getHandle('orphan').describe()).rejects.toThrow(ScheduleNotFoundError);
  });

  it('Finding: a run checks --min-kek-age before whether the key source can generate: a young KEK ends it with nothing to do, where it used to fail saying the source cannot generate', async () => {
    const other = await createTestDatabase();
    try {
      const keys = testKeys(['v1']);
      await new KekRegistry(other.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
      const validated = await createActivities({ db: other.pool, keys }).validateRotation({
        from: 'current',
        to: 'new',
        minKekAge: '30d',
      });
      expect(validated.nothingToDo).toMatch(/^KEK 'v1' became active \d+m?s ago; rotations are due after 30d 0h$/);
    } finally {
      await other.drop();
    }
  });

  it("Finding: schedule list shows each recent run and what came of the rotation it started (completed, failed with its reason), where it showed only the next run and the launcher's started: true", async () => {
    const created = await rekey('schedule', 'create', '--id', 'rekey-runs', ...ROTATES_WHEN_TRIGGERED);
    expect(created.stderr).toBe('');
    expect(created.stdout).toBe(
      'created schedule rekey-runs\n  Web UI: https://temporal.example.com/namespaces/default/schedules/rekey-runs\n',
    );
    await env.client.schedule.getHandle('rekey-runs').trigger();
    await scheduledRun(env.client, 'rekey-runs', 1);
    const rotationId = await rotationIdIn(db.pool);
    await resultWithin(env.client.workflow.getHandle(rotationId));

    // The next run cannot succeed: the active KEK is gone from the keyring file.
    const active = (await new KekRegistry(db.pool, BUILTIN_TARGET).active())!.kekId;
    const other = new FileKeyring(keyringFile);
    await other.destroy(active);
    other.close();
    await env.client.schedule.getHandle('rekey-runs').trigger();
    await scheduledRun(env.client, 'rekey-runs', 2);
    await expect(resultWithin(env.client.workflow.getHandle(rotationId))).rejects.toThrow();

    const listed = await rekey('schedule', 'list');
    expect(listed.stderr).toBe('');
    const lines = listed.stdout.split('\n');
    const at = lines.findIndex((line) => line.startsWith('rekey-runs: every 90d; next rotation '));
    expect(at).toBeGreaterThanOrEqual(0);
    expect(lines[at + 1]).toMatch(
      new RegExp(
        `^ {2}\\S+ {2}${rotationId.replaceAll('.', '\\.')}@\\S+: Failed: KEK '${active}' is not in keyring file ${keyringFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: its DEKs cannot be unwrapped$`,
      ),
    );
    expect(lines[at + 2]).toMatch(new RegExp(`^ {2}\\S+ {2}${rotationId.replaceAll('.', '\\.')}@\\S+: Succeeded: `));
    const json = JSON.parse((await rekey('--json', 'schedule', 'list')).stdout) as {
      scheduleId: string;
      runs: { state: string; rotation?: string }[];
    }[];
    expect(json.find((s) => s.scheduleId === 'rekey-runs')?.runs.map((r) => r.state)).toEqual(['failed', 'succeeded']);
    expect((await rekey('schedule', 'delete', 'rekey-runs')).code).toBe(0);
  });

  it('Finding: schedule list names the target and keyspace each schedule rotates (text and --json), where it showed only the id and its timing', async () => {
    // Two schedules in one namespace, as docs/05 gives a second target its own --id: which one rotates what?
    const created = await rekey('schedule', 'create', '--id', 'rekey-which', '--every', '90d', '--target', 'rekey');
    expect(created.code, created.stderr).toBe(0);
    try {
      const keyspace = await keyspaceIn(db.pool);
      const listed = await rekey('schedule', 'list');
      expect(listed.stderr).toBe('');
      expect(listed.stdout.split('\n').find((line) => line.startsWith('rekey-which: '))).toMatch(
        new RegExp(
          `^rekey-which: every 90d; next rotation \\S+; rotates target 'rekey' of keyspace ${keyspace.id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`,
        ),
      );
      const json = JSON.parse((await rekey('--json', 'schedule', 'list')).stdout) as {
        scheduleId: string;
        target: string;
        keyspace?: string;
      }[];
      expect(json.find((s) => s.scheduleId === 'rekey-which')).toMatchObject({
        target: 'rekey',
        keyspace: keyspace.id,
      });
    } finally {
      expect((await rekey('schedule', 'delete', 'rekey-which')).code).toBe(0);
    }
  });
});
