import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import type { DestroyReport } from '../../src/activities/kek';
import { dekFingerprints, seedTenants } from '../../src/dev/tenants';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { resolveKek, fingerprintIn, storedIds } from '../helpers/store-keys';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createWorker } from '../../src/worker';
import { rotateKek, type RotationReport } from '../../src/workflows';
import { KekRetiredError } from '../../src/errors';
import { runRekey, type CliResult } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { destroyIdIn, rotationIdIn } from '../helpers/keyspace';
import { createDevServerEnv, resultWithin, workflowBundle } from '../helpers/temporal';
import { RESTORES_AND_DESTRUCTIONS } from '../helpers/keyring';
import { generateKek } from '../../src/keyring/keyring';

const TENANTS = 500;

/**
 * Retired is not destroyed: on the dev server (real time, so a one-hour window stays open while the test works in
 * it), with the file keyring, through the rotation workflow, the destruction workflow it leaves behind, and the CLI.
 */
describe('a retired KEK is restorable within its window and destroyed after it', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let keyring: FileKeyring;
  let keyringFile: string;
  let worker: Worker;
  let running: Promise<void>;
  const taskQueue = `restore-${randomUUID()}`;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-restore-'));

  function rekey(...args: string[]): Promise<CliResult> {
    return runRekey(
      args,
      { PATH: process.env.PATH, DATABASE_URL: db.url, REKEY_KEY_PROVIDER: 'file', REKEY_KEYRING_FILE: keyringFile },
      60_000,
    );
  }

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    keyringFile = path.join(scratch, 'keyring.json');
    keyring = FileKeyring.open(keyringFile, { create: true });
    await generateKek(keyring, 'v1');
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue,
      db: db.pool,
      keys: keyring,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
  });

  afterAll(async () => {
    worker?.shutdown();
    await running;
    keyring?.close();
    await db?.drop();
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  /** A fresh start on `from` (tenants wrapped by it), then a rotation to a new KEK with this restore window. */
  async function rotateAway(from: string, restoreWindow: string): Promise<{ to: string; before: Map<string, string> }> {
    await db.pool.query('TRUNCATE rekey.tenant_deks, rekey.rewrap_progress');
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive(from, await fingerprintIn(keyring, from));
    await seedTenants({ db: db.pool, keys: keyring, kekId: from, count: TENANTS, prefix: `${from}-tenant-` });
    const before = await dekFingerprints(db.pool, keyring);
    const handle = await env.client.workflow.start(rotateKek, {
      taskQueue,
      workflowId: await rotationIdIn(db.pool),
      args: [
        {
          from,
          to: 'new',
          gracePeriod: '1s',
          fleetLiveWithin: '1h',
          restoreWindow,
          allowShortRestoreWindow: 'test: a window a dev server sees end',
        },
      ],
    });
    const report = await resultWithin<RotationReport>(handle, 90_000);
    expect(report.outcome).toBe('completed');
    expect((await registry.get(from))?.state).toBe('retired');
    return { to: (await registry.active())!.kekId, before };
  }

  it('within the window: rekey keys restore brings v1 back to decrypt-only with its reason recorded, it unwraps again, and the destroy step leaves it', async () => {
    const { to, before } = await rotateAway('v1', '1h');
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    const destruction = await env.client.workflow.getHandle(await destroyIdIn(db.pool, 'v1')).describe();
    expect(destruction.status.name).toBe('RUNNING');
    await expect(
      resolveKek(keyring, 'v1', { fingerprint: await fingerprintIn(keyring, 'v1'), state: 'retired' }),
    ).rejects.toThrow(KekRetiredError);

    const restored = await rekey('keys', 'restore', 'v1', '--reason', 'gateway-3 still reads v1', '--actor', 'alice');
    expect(restored, restored.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(restored.stdout).toContain("KEK 'v1' of target 'rekey' is decrypt_only again");
    const record = await registry.get('v1');
    expect(record).toMatchObject({ state: 'decrypt_only', retiredAt: null, restorableUntil: null });
    expect(await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).toMatchObject([
      { event: 'restored', reason: 'gateway-3 still reads v1', actor: 'alice' },
    ]);
    // The registry lets it unwrap again: every DEK, rewrapped under the new KEK meanwhile, is unchanged.
    (await resolveKek(keyring, 'v1', record)).key.fill(0);
    const after = await dekFingerprints(db.pool, keyring);
    for (const [tenantId, fingerprint] of before) expect(after.get(tenantId)).toBe(fingerprint);

    // A restore without a reason is refused; a second one with a reason changes nothing.
    expect((await rekey('keys', 'restore', 'v1')).stderr).toMatch(/--reason/);
    expect((await rekey('keys', 'restore', 'v1', '--reason', 'again')).code).toBe(0);
    expect(await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).toHaveLength(1);

    // The destruction step, when its timer fires, finds v1 restored and keeps it.
    const report = await createActivities({ db: db.pool, keys: keyring }).destroyKek({ kekId: 'v1' });
    expect(report.outcome).toBe('kept');
    keyring = FileKeyring.open(keyringFile);
    expect((await storedIds(keyring)).includes('v1')).toBe(true);
    expect(to).toBe('v2');
  });

  it('after the window: the destruction workflow removes the KEK from the keyring and marks it destroyed, and a restore is refused', async () => {
    // v2 is active from the first test; rotate from it to v3 with a window of two seconds.
    const { to } = await rotateAway('v2', '2s');
    expect(to).toBe('v3');
    const destruction = env.client.workflow.getHandle(await destroyIdIn(db.pool, 'v2'));
    const report = await resultWithin<DestroyReport>(destruction, 60_000);
    expect(report).toMatchObject({ outcome: 'destroyed', detail: `removed from ${keyringFile}` });

    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    expect((await registry.get('v2'))?.state).toBe('destroyed');
    expect(await registry.events('v2', RESTORES_AND_DESTRUCTIONS)).toMatchObject([
      { event: 'destroyed', actor: 'rekey' },
    ]);
    const stored = JSON.parse(fs.readFileSync(keyringFile, 'utf8')) as { keks: { id: string }[] };
    expect(stored.keks.map((k) => k.id)).toEqual(['v1', 'v3']);

    const refused = await rekey('keys', 'restore', 'v2', '--reason', 'too late');
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/KEK 'v2' of target 'rekey' cannot be restored: it is destroyed, not retired/);
    expect((await registry.get('v2'))?.state).toBe('destroyed');
  });
});
