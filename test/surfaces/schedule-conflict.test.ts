// Two databases in one Temporal namespace (docs/02: "two task queues"), each with rekey's own table: the second
// operator's `rekey schedule create`, as docs/05 writes it, is refused because the schedule id is the namespace's,
// and the refusal said only "schedule rekey-quarterly already exists": not whose it is, nor what to do. Against the
// built CLI, a dev server, a worker per database and PostgreSQL.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TargetRuntimes } from '../../src/targets/runtime';
import { runRekeyAt, type CliResult } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { serveWorker, type ServedWorker } from '../helpers/keyring-worker';
import { keyspaceIn } from '../helpers/keyspace';
import { createDevServerEnv } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

interface Deployment {
  db: TestDatabase;
  keyring: FileKeyring;
  keyringFile: string;
  /** Its worker, over its targets (closed with it). */
  served: ServedWorker;
  taskQueue: string;
}

describe('schedule create where another keyspace of the namespace holds the schedule id', () => {
  let env: TestWorkflowEnvironment;
  const deployments: Deployment[] = [];
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-schedule-conflict-'));

  beforeAll(async () => {
    env = await createDevServerEnv();
    for (const name of ['shop', 'billing']) {
      const db = await createTestDatabase();
      const keyringFile = path.join(scratch, `${name}-keyring.json`);
      const keyring = FileKeyring.open(keyringFile, { create: true });
      await generateKek(keyring, 'v1');
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keyring, 'v1'));
      const targets = new TargetRuntimes({ db: db.pool, keys: keyring });
      const taskQueue = `rekey-${name}`;
      const served = await serveWorker(env, { taskQueue, db: db.pool, keys: keyring, targets, temporal: true });
      deployments.push({ db, keyring, keyringFile, served, taskQueue });
    }
  });

  afterAll(async () => {
    for (const d of deployments) {
      await d.served.stop();
      d.keyring.close();
      await d.db.drop();
    }
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  /** The operator of `d`, with docs/05's environment. */
  const rekey = (d: Deployment, ...args: string[]): Promise<CliResult> =>
    runRekeyAt(env.address, d.taskQueue, args, {
      DATABASE_URL: d.db.url,
      REKEY_KEY_PROVIDER: 'file',
      REKEY_KEYRING_FILE: d.keyringFile,
    });

  it('Finding: a second database\'s rekey schedule create answered only "schedule rekey-quarterly already exists": it now names the keyspace the schedule rotates and the --id to give, which then works; the same keyspace\'s says to delete it first', async () => {
    const [shop, billing] = deployments as [Deployment, Deployment];
    const shopKeyspace = (await keyspaceIn(shop.db.pool, 'rekey')).id;
    const billingKeyspace = await keyspaceIn(billing.db.pool, 'rekey');
    expect(await rekey(shop, 'schedule', 'create')).toMatchObject({ code: 0, stderr: '' });

    const refused = await rekey(billing, 'schedule', 'create');
    const suggested = `rekey-quarterly-rekey-${billingKeyspace.databaseId.slice(0, 8)}`;
    expect({ code: refused.code, stderr: refused.stderr.trim() }).toEqual({
      code: 4,
      stderr:
        `rekey: schedule rekey-quarterly already exists (it rotates target 'rekey' of keyspace ${shopKeyspace}, not ` +
        `${billingKeyspace.id}): a schedule id is one per Temporal namespace; give this one its own, e.g. --id ${suggested}`,
    });
    expect(await rekey(billing, 'schedule', 'create', '--id', suggested)).toMatchObject({ code: 0, stderr: '' });

    const again = await rekey(shop, 'schedule', 'create');
    expect({ code: again.code, stderr: again.stderr.trim() }).toEqual({
      code: 4,
      stderr:
        `rekey: schedule rekey-quarterly already exists for this keyspace (target 'rekey', ${shopKeyspace}): to ` +
        'change it, delete it first (rekey schedule delete rekey-quarterly), then create it again',
    });
  }, 180_000);
});
