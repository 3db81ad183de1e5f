// Every surface tells the operator the same truth: a restore of a KEK whose store rekey may not write (the
// environment) is done in the registry, and the store's part is the operator's. The keyring's answer ("set
// TEST_KEK_v1 again in every worker, admin API and application process …") reached neither the CLI nor the admin API.
// Against the built CLI, the admin API (over a dev server's client) and PostgreSQL; the registry's states reached
// through the worker's keyring, as a rotation reaches them.
import { spawnSync } from 'node:child_process';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import type { Keyring } from '../../src/keyring/keyring';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRekey } from '../helpers/cli';
import { docPage } from '../helpers/readme';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyringFor, nothingNeeded, RESTORES_AND_DESTRUCTIONS, TEST_KEYSPACE } from '../helpers/keyring';
import { createTestKeys } from '../helpers/keys';
import { createDevServerEnv, workflowBundle } from '../helpers/temporal';
import { createWorker } from '../../src/worker';
import { fingerprintIn } from '../helpers/store-keys';

const TOKEN = 'restore-test-token-0123456789abcdef';
/** The environment driver's answer to a restore: what the operator sets again. */
const INSTRUCTION =
  'set TEST_KEK_v1 again in every worker, admin API and application process, to the key the registry recorded';

describe("a restore in a store rekey may not write: the store's part is in the CLI's and the admin API's answer", () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let targets: TargetRuntimes;
  let api: FastifyInstance;
  let keyring: Keyring;
  let registry: KekRegistry;
  const keys = createTestKeys(['v1', 'v2'], 'v2');

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', await fingerprintIn(keys.provider, 'v1'));
    // Rotation v1 → v2 through the worker's keyring: v2 provisioned from the environment, promoted; v1 decrypt-only.
    keyring = keyringFor(db.pool, new EnvKeyProvider(keys.env, 'TEST'), TEST_KEYSPACE);
    await keyring.provision('v2', { generate: false });
    await keyring.promote('v1', 'v2');
    targets = new TargetRuntimes({ db: db.pool, keys: keys.provider });
    api = await buildAdminServer({
      client: env.client,
      targets,
      defaultTarget: BUILTIN_TARGET,
      taskQueue: 'restore-operator-must',
      token: TOKEN,
      configuredCurrentKekId: () => 'v2',
    });
  });

  afterAll(async () => {
    await api?.close();
    await targets?.close();
    keyring?.close();
    await db?.drop();
    await env?.teardown();
  });

  /** v1 retired (the rotation's last step), restorable for an hour. */
  async function retireV1(): Promise<void> {
    const retired = await keyring.retire('v1', { restoreWindowMs: 3_600_000, prove: nothingNeeded });
    expect(retired).toMatchObject({ retired: { state: 'retired' } });
  }

  it("Finding: rekey keys restore and POST …/keks/{id}/restore of an environment KEK the worker still holds answer what the operator must do in the environment, in the keyring's words (both dropped it)", async () => {
    // The built CLI, as the operator runs it, with the environment that holds v1 still.
    await retireV1();
    const operator = { PATH: process.env.PATH, DATABASE_URL: db.url, REKEY_KEY_PROVIDER: 'env', ...keys.env };
    const cli = await runRekey(
      ['keys', 'restore', 'v1', '--reason', 'gateway-3 still reads v1', '--actor', 'alice'],
      operator,
      60_000,
    );
    expect(cli, cli.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(cli.stdout).toContain("KEK 'v1' of target 'rekey' is decrypt_only again");
    expect(cli.stdout).toContain(`The key store's part is yours: ${INSTRUCTION}\n`);
    expect((await registry.require('v1')).state).toBe('decrypt_only');

    // --json carries it as a field of its own.
    await retireV1();
    const json = await runRekey(
      ['--json', 'keys', 'restore', 'v1', '--reason', 'gateway-3 again', '--actor', 'alice'],
      operator,
      60_000,
    );
    expect(json, json.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(JSON.parse(json.stdout)).toEqual({
      target: 'rekey',
      kekId: 'v1',
      state: 'decrypt_only',
      fingerprint: await fingerprintIn(keys.provider, 'v1'),
      actor: 'alice',
      operatorMust: INSTRUCTION,
    });

    // The admin API: the same words.
    await retireV1();
    const restored = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/keks/v1/restore',
      headers: { authorization: `Bearer ${TOKEN}` },
      payload: { reason: 'gateway-3 once more', actor: 'bob' },
    });
    expect(restored.statusCode, restored.body).toBe(200);
    expect(restored.json()).toEqual({
      target: 'rekey',
      kek_id: 'v1',
      state: 'decrypt_only',
      fingerprint: await fingerprintIn(keys.provider, 'v1'),
      actor: 'bob',
      operator_must: INSTRUCTION,
    });

    expect((await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).map((e) => [e.event, e.actor])).toEqual([
      ['restored', 'alice'],
      ['restored', 'alice'],
      ['restored', 'bob'],
    ]);
  });

  it('Finding: rekey keys restore ended with "rotate again or retire it when you are done", and no command retires a KEK by itself: it now names the rotation that moves what the KEK wraps and retires it again, which a worker accepts as printed', async () => {
    const worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue: 'restore-operator-must',
      db: db.pool,
      keys: keys.provider,
      targets,
      workflowBundle: workflowBundle(),
    });
    const running = worker.run();
    try {
      await retireV1();
      const operator = { PATH: process.env.PATH, DATABASE_URL: db.url, REKEY_KEY_PROVIDER: 'env', ...keys.env };
      const cli = await runRekey(['keys', 'restore', 'v1', '--reason', 'gateway-3 still reads v1'], operator, 60_000);
      expect(cli, cli.stderr).toMatchObject({ code: 0, stderr: '' });
      expect(cli.stdout).not.toContain('retire it when');
      const command = /when you are done, (rekey rotate [^\n]+) moves what it wraps and retires it again\./.exec(
        cli.stdout,
      )?.[1];
      expect(command).toBe('rekey rotate --target rekey --from v1 --to v2');
      const rotate = await runRekey(
        ['--address', env.address, '--task-queue', 'restore-operator-must', ...command!.split(' ').slice(1)],
        operator,
        90_000,
      );
      expect(rotate, rotate.stderr).toMatchObject({ code: 0, stderr: '' });
      expect(rotate.stdout).toMatch(/^started rotation \S+ of target 'rekey' \('v1' → 'v2'\)/);
    } finally {
      worker.shutdown();
      await running;
    }
  }, 180_000);

  it("docs/06's command that reads a KEK's audit trail (psql … rekey.kek_events), run as written, lists v1's restores with who and why", () => {
    const command = /`(psql "\$DATABASE_URL" -c "SELECT event, reason, actor, at FROM rekey\.kek_events[^`]+)`/.exec(
      docPage('docs/06-key-stores.md'),
    )?.[1];
    expect(command, 'docs/06 gives the psql line').toBeDefined();
    const run = spawnSync('bash', ['-c', command!], {
      env: { PATH: process.env.PATH, DATABASE_URL: db.url },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^\s*event\s*\|\s*reason\s*\|\s*actor\s*\|\s*at/);
    expect(run.stdout).toMatch(/restored\s*\|\s*gateway-3 still reads v1\s*\|\s*alice/);
    expect(run.stdout).toMatch(/restored\s*\|\s*gateway-3 once more\s*\|\s*bob/);
  });
});
