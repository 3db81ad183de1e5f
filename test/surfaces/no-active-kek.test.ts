// A new operator on docs/05's set-up (rekey's own table, a keyring file with `v1` made by `rekey keys generate`, a
// worker, no application started yet) who rotates is told what records the first active KEK. Before, `rekey rotate
// --from v1 --to new` said "'v1' is not the KEK in use (the active KEK is 'none'): rotate from the active KEK" and
// `--from current` said "seed it with <PREFIX>_CURRENT_KEK_ID first", a variable a keyring file has no use for; the
// admin API said the same. Against the built CLI, the admin API, a dev server, a worker and PostgreSQL.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRekey } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { createDevServerEnv } from '../helpers/temporal';
import { generateKek } from '../../src/keyring/keyring';

const TASK_QUEUE = 'no-active-kek';
const TOKEN = 'no-active-kek-token-0123456789';
/** What the operator is told to do, on every surface. */
const FIRST_ACTIVE =
  /the application's first start \(TenantCrypto\.start, docs\/03\) records the current KEK of keyring file \S+ as the active one: start it, then rotate/;

describe('a rotation of rekey’s own table before its application first started says what records the first active KEK', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let keyring: FileKeyring;
  let targets: TargetRuntimes;
  let served: ServedWorker;
  let api: FastifyInstance;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-no-active-'));
  const keyringFile = path.join(scratch, 'keyring.json');

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    keyring = FileKeyring.open(keyringFile, { create: true });
    await generateKek(keyring, 'v1');
    targets = new TargetRuntimes({ db: db.pool, keys: keyring });
    served = await serveWorker(env, { taskQueue: TASK_QUEUE, db: db.pool, keys: keyring, targets });
    api = await served.adminApi(TOKEN);
  });

  afterAll(async () => {
    await served?.stop();
    keyring?.close();
    await db?.drop();
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  const operator = () => ({
    PATH: process.env.PATH,
    DATABASE_URL: db.url,
    REKEY_KEY_PROVIDER: 'file',
    REKEY_KEYRING_FILE: keyringFile,
  });

  it('Finding: rekey rotate --from v1 --to new (and --from current) before the first active KEK named no way to get one ("rotate from the active KEK", "seed it with <PREFIX>_CURRENT_KEK_ID"): both forms and the admin API say the application\'s first start records it, exit 2 / HTTP 400', async () => {
    for (const from of ['v1', 'current']) {
      const cli = await runRekey(
        ['--address', env.address, '--task-queue', TASK_QUEUE, 'rotate', '--from', from, '--to', 'new'],
        operator(),
      );
      expect({ code: cli.code, stdout: cli.stdout }).toEqual({ code: 2, stdout: '' });
      expect(cli.stderr).toMatch(FIRST_ACTIVE);
      expect(cli.stderr).not.toContain('<PREFIX>_CURRENT_KEK_ID');
      const http = await api.inject({
        method: 'POST',
        url: '/admin/v1/secrets/rotate-all',
        headers: { authorization: `Bearer ${TOKEN}` },
        payload: { from, to: 'new' },
      });
      expect(http.statusCode, http.body).toBe(400);
      expect(http.json<{ message: string }>().message).toMatch(FIRST_ACTIVE);
      expect(cli.stderr.trim()).toBe(`rekey: ${http.json<{ message: string }>().message}`);
    }
  }, 240_000);
});
