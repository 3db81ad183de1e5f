// A restore of a KEK whose restore window has ended is refused at once, in the registry's words, on the CLI and the
// admin API alike. With a key store rekey may not write (the environment) that no longer holds the key, both answered
// with the store's part first ("set REKEY_KEK_v0 again in every worker, admin API and application process"): an
// operator who did so was then told that the window had ended. Against the built CLI, the admin API (over a dev
// server's client) and PostgreSQL.
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRekey } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { RESTORES_AND_DESTRUCTIONS } from '../helpers/keyring';
import { createTestKeys, testKeys } from '../helpers/keys';
import { fingerprintIn } from '../helpers/store-keys';
import { createDevServerEnv } from '../helpers/temporal';

const TOKEN = 'restore-window-token-0123456789abcdef';

describe('a restore after the restore window has ended', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let targets: TargetRuntimes;
  let api: FastifyInstance;
  let registry: KekRegistry;
  // The environment holds v1 only: v0, retired long ago, was removed from it as the run asked.
  const keys = createTestKeys(['v1'], 'v1');
  let v0: string;

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    v0 = await fingerprintIn(testKeys(['v0']), 'v0');
    await registry.seedActive('v1', await fingerprintIn(keys.provider, 'v1'));
    await db.pool.query(
      `INSERT INTO rekey.keks (target, kek_id, state, fingerprint, retired_at, restorable_until)
       VALUES ($1, 'v0', 'retired', $2, now() - interval '40 days', now() - interval '10 days')`,
      [BUILTIN_TARGET, v0],
    );
    targets = new TargetRuntimes({ db: db.pool, keys: keys.provider });
    api = await buildAdminServer({
      client: env.client,
      targets,
      defaultTarget: BUILTIN_TARGET,
      taskQueue: 'restore-window-ended',
      token: TOKEN,
      configuredCurrentKekId: () => undefined,
    });
  });

  afterAll(async () => {
    await api?.close();
    await targets?.close();
    await db?.drop();
    await env?.teardown();
  });

  it('Finding: rekey keys restore and the admin API refuse a KEK whose window has ended in the same words (exit 5, HTTP 422), where both asked the operator to set REKEY_KEK_v0 again first; nothing is recorded', async () => {
    const { restorableUntil } = (await registry.get('v0'))!;
    const words = `KEK 'v0' of target 'rekey' cannot be restored: its restore window ended at ${restorableUntil!.toISOString()}; it is being destroyed`;

    const cli = await runRekey(['keys', 'restore', 'v0', '--reason', 'gateway-3 still reads v0'], {
      PATH: process.env.PATH,
      DATABASE_URL: db.url,
      REKEY_KEK_v1: keys.env.TEST_KEK_v1!,
    });
    expect({ code: cli.code, stderr: cli.stderr }).toEqual({ code: 5, stderr: `rekey: ${words}\n` });

    const http = await api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/keks/v0/restore',
      headers: { authorization: `Bearer ${TOKEN}` },
      payload: { reason: 'gateway-3 still reads v0', actor: 'alice' },
    });
    expect({ status: http.statusCode, body: http.json<unknown>() }).toEqual({
      status: 422,
      body: { error: 'refused', message: words },
    });
    expect(await registry.get('v0')).toMatchObject({ state: 'retired' });
    expect(await registry.events('v0', RESTORES_AND_DESTRUCTIONS)).toEqual([]);
  });
});
