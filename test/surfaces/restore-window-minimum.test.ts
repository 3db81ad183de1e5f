// A restore window of 0 s was accepted by every surface: a retired KEK's destruction could follow its retirement at
// once, with no time to notice that something still needs it and restore it. A rotation that retires a KEK is now
// refused below MIN_RESTORE_WINDOW (1d) unless the operator gives the reason to go below it, which the run records.
// Schedules take no restore window (their runs use the default, 30d): nothing to check there.
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedTenants } from '../../src/dev/tenants';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { abortUpdate, rotateKek } from '../../src/workflows';
import { runRekeyAt } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { createDevServerEnv, resultWithin, type OwnServerEnvironment } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

const TOKEN = 'restore-window-token-0123456789';
const taskQueue = 'rekey-restore-window-minimum';
const REFUSAL =
  /restore window '0s' \(rekey rotate --restore-window, restore_window in the admin API\) is shorter than the minimum of 1d: the retired KEK would be destroyed as soon as it is retired, with no time to restore it \(rekey keys restore\) if something still needs it\. Give a window of at least 1d, or the reason to go below it: --allow-short-restore-window <reason> \(allow_short_restore_window in the admin API\), recorded in the run/;

describe('a restore window below the minimum (1d) is refused on every surface unless the operator gives a reason', () => {
  let env: OwnServerEnvironment;
  let db: TestDatabase;
  let api: FastifyInstance;
  let served: ServedWorker;
  let rotationId: string;
  const keys = createTestKeys(['v1', 'v2', 'v3'], 'v1');

  const post = (payload: object) =>
    api.inject({
      method: 'POST',
      url: '/admin/v1/secrets/rotate-all',
      headers: { authorization: `Bearer ${TOKEN}` },
      payload,
    });
  const rekey = (...args: string[]) =>
    runRekeyAt(env.address, taskQueue, args, { DATABASE_URL: db.url, REKEY_KEY_PROVIDER: 'env', ...keys.env }, 60_000);

  /** The input the rotation's latest run was started with. */
  async function startedWith(): Promise<Record<string, unknown>> {
    const history = await env.client.workflow.getHandle(rotationId).fetchHistory();
    const input = history.events![0]!.workflowExecutionStartedEventAttributes!.input!.payloads![0]!.data!;
    return JSON.parse(Buffer.from(input).toString('utf8')) as Record<string, unknown>;
  }

  async function abortAndWait(): Promise<void> {
    const handle = env.client.workflow.getHandle(rotationId);
    await handle.executeUpdate(abortUpdate, { args: ['the test saw what it needed'] });
    await resultWithin(handle, 60_000);
  }

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys.provider, 'v1'));
    await seedTenants({ db: db.pool, keys: keys.provider, kekId: 'v1', count: 50 });
    served = await serveWorker(env, { taskQueue, db: db.pool, keys: keys.provider });
    rotationId = await rotationIdIn(db.pool);
    api = await served.adminApi(TOKEN);
  });

  afterAll(async () => {
    await served?.stop();
    keys.provider.close();
    await db?.drop();
    await env?.teardown();
  });

  it('Finding: a restore window of 0s is refused by rekey rotate (exit 2) and rotate-all (400), naming the setting, the minimum and the reason that lets it go below; no run starts', async () => {
    const cli = await rekey('rotate', '--from', 'v1', '--to', 'v2', '--restore-window', '0s');
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(REFUSAL);
    const http = await post({ from: 'v1', to: 'v2', restore_window: '0s' });
    expect(http.statusCode).toBe(400);
    expect(http.json<{ message: string }>().message).toMatch(REFUSAL);
    await expect(env.client.workflow.getHandle(rotationId).describe()).rejects.toThrow(WorkflowNotFoundError);
    expect((await new KekRegistry(db.pool, BUILTIN_TARGET).get('v1'))?.state).toBe('active');
  });

  it('Finding: a run started without rekey’s client (temporal workflow start) with a restore window of 0s is refused at its first step, validate, with the same words; nothing is written', async () => {
    const handle = await env.client.workflow.start(rotateKek, {
      taskQueue,
      workflowId: rotationId,
      args: [{ from: 'v1', to: 'v2', restoreWindow: '0s', keyspace: (await keyspaceIn(db.pool)).id }],
    });
    const failure = await resultWithin(handle, 60_000).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    expect((failure as WorkflowFailedError).cause?.message).toMatch(REFUSAL);
    expect(await new KekRegistry(db.pool, BUILTIN_TARGET).get('v2')).toBeUndefined();
  });

  it('with a reason (--allow-short-restore-window, allow_short_restore_window) a window below the minimum is accepted on both surfaces, and the run records the reason', async () => {
    const http = await post({
      from: 'v1',
      to: 'v2',
      grace_period: '1d',
      restore_window: '1h',
      allow_short_restore_window: 'staging keyspace: nothing outside it reads v1',
    });
    expect(http.statusCode, http.body).toBe(202);
    expect(await startedWith()).toMatchObject({
      restoreWindow: '1h',
      allowShortRestoreWindow: 'staging keyspace: nothing outside it reads v1',
    });
    await abortAndWait();

    const cli = await rekey(
      'rotate',
      '--from',
      'v1',
      '--to',
      'v2',
      '--grace',
      '1d',
      '--restore-window',
      '0s',
      '--allow-short-restore-window',
      'a test keyspace, destroyed with its database',
    );
    expect(cli.code, cli.stderr).toBe(0);
    expect(await startedWith()).toMatchObject({
      restoreWindow: '0s',
      allowShortRestoreWindow: 'a test keyspace, destroyed with its database',
    });
    await abortAndWait();
  });
});
