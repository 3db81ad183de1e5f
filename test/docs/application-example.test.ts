// docs/03's TypeScript examples, as an application that depends on the clone compiles and runs them: the page's two
// blocks, in order, are the application's source; it imports rekey through node_modules/rekey (what
// `npm install /path/to/rekey` makes: a link to the clone, built) and has pg of its own; strict TypeScript compiles it
// against the built package, and node runs it against a fresh database, as page 2's worker left it (migrated).
// Then docs/06's move of such a keyspace into AWS KMS, its block run as written by bash, against moto as the KMS
// tests start it: the application has written with its local KEK v1, the worker runs with what the block exports.
import { execFile } from 'node:child_process';
import { DecryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startMoto, type MotoServer } from '../../src/dev/moto';
import { awsClientConfig } from '../../src/keyring/aws';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { projectRoot } from '../../src/project-paths';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { pageFences } from '../helpers/doc-fences';
import { rotationIdIn } from '../helpers/keyspace';
import { runScript, type RunningProcess } from '../helpers/readme';
import { createDevServerEnv, progressUntil, type OwnServerEnvironment } from '../helpers/temporal';
import { unwrapUnder } from '../helpers/store-keys';

const PAGE = 'docs/03-connect-your-application.md';
const KMS_PAGE = 'docs/06-key-stores.md';
const b64u = (key: Buffer) => key.toString('base64url');

function run(
  command: string,
  args: string[],
  options: { cwd: string; env: NodeJS.ProcessEnv },
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { ...options, timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe("docs/03's application example, compiled and run as an application that depends on the clone", () => {
  const app = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-app-'));
  const databases: TestDatabase[] = [];
  const env = { PATH: process.env.PATH, HOME: process.env.HOME };
  let compiled: { code: number; stdout: string; stderr: string };
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
    fs.rmSync(app, { recursive: true, force: true });
  });

  /** The application, run once against a fresh database with `keys` in its environment; returns that database. */
  async function runApplication(keys: Record<string, string>): Promise<TestDatabase> {
    const db = await createTestDatabase();
    databases.push(db);
    const ran = await run(process.execPath, [path.join('dist', 'app.js')], {
      cwd: app,
      env: { ...env, DATABASE_URL: db.url, ...keys },
    });
    expect(ran, ran.stderr).toMatchObject({ code: 0, stdout: 'webhook secret\n' });
    return db;
  }

  beforeAll(async () => {
    const blocks = pageFences(PAGE).filter((fence) => fence.lang === 'ts');
    expect(blocks.map((block) => block.text.split('\n')[0])).toEqual([
      "import { Pool } from 'pg';",
      'async function main(): Promise<void> {',
    ]);
    // The application: its source is the page's blocks; its node_modules as npm leaves them.
    fs.mkdirSync(path.join(app, 'src'));
    fs.writeFileSync(path.join(app, 'src', 'app.ts'), blocks.map((block) => block.text).join('\n\n'));
    const pgVersion = (
      JSON.parse(fs.readFileSync(path.join(projectRoot, 'node_modules/pg/package.json'), 'utf8')) as {
        version: string;
      }
    ).version;
    fs.writeFileSync(
      path.join(app, 'package.json'),
      JSON.stringify({ name: 'my-app', private: true, dependencies: { rekey: `file:${projectRoot}`, pg: pgVersion } }),
    );
    fs.writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          // As `tsc --init` writes it: an application does not type-check its dependencies' declarations
          // (@temporalio/common's name the `ms` package's types, which its CommonJS entry does not expose).
          skipLibCheck: true,
          types: ['node'],
          outDir: 'dist',
          rootDir: 'src',
        },
        include: ['src'],
      }),
    );
    fs.mkdirSync(path.join(app, 'node_modules', '@types'), { recursive: true });
    fs.symlinkSync(projectRoot, path.join(app, 'node_modules', 'rekey'), 'dir');
    for (const own of ['pg', '@types/pg', '@types/node']) {
      fs.symlinkSync(path.join(projectRoot, 'node_modules', own), path.join(app, 'node_modules', own), 'dir');
    }
    compiled = await run(
      process.execPath,
      [path.join(projectRoot, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'],
      { cwd: app, env },
    );
  }, 120_000);

  it('compiles under strict TypeScript against the documented import paths of the built package, and encrypts and decrypts a tenant value on a fresh database, its DEK wrapped by the current KEK', async () => {
    expect(compiled, compiled.stdout).toMatchObject({ code: 0, stdout: '' });
    const db = await runApplication({
      REKEY_KEK_v1: b64u(randomBytes(32)),
      REKEY_KEK_v2: b64u(randomBytes(32)),
      REKEY_CURRENT_KEK_ID: 'v2',
    });
    const { rows } = await db.pool.query<{ tenant_id: string; kek_id: string }>(
      'SELECT tenant_id, kek_id FROM rekey.tenant_deks',
    );
    expect(rows).toEqual([{ tenant_id: 'tenant-42', kek_id: 'v2' }]);
  }, 120_000);

  describe("docs/06's move of that keyspace into AWS KMS, against moto", () => {
    let moto: MotoServer;
    let temporal: OwnServerEnvironment;
    let worker: RunningProcess | undefined;
    beforeAll(async () => {
      [moto, temporal] = await Promise.all([startMoto(inject('toolchain').motoServer), createDevServerEnv()]);
    });
    afterAll(async () => {
      await worker?.stop();
      await temporal?.teardown();
      await moto?.stop();
    });

    it('as written: with REKEY_KEK_v1 and REKEY_CURRENT_KEK_ID=v1 still set, the worker on the exported settings, rekey rotate --from current --to new starts; every DEK moves to a new KMS key, the same DEK, in KMS form', async () => {
      expect(compiled, compiled.stdout).toMatchObject({ code: 0, stdout: '' });
      const blocks = pageFences(KMS_PAGE).filter((fence) => fence.text.includes('REKEY_AWS_KMS_LOCAL_KEYS=env'));
      expect(blocks).toHaveLength(1);
      const block = blocks[0]!;
      expect(block.marker).toEqual({ kind: 'elsewhere', by: 'test/docs/application-example.test.ts' });
      // The keyspace as the page finds it: the application wrote under its local KEK v1.
      const local = { REKEY_KEK_v1: b64u(randomBytes(32)), REKEY_CURRENT_KEK_ID: 'v1' };
      const db = await runApplication(local);
      const written = await db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
        'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks',
      );
      expect(written.rows.map((row) => [row.tenant_id, row.kek_id])).toEqual([['tenant-42', 'v1']]);
      const localKeys = new EnvKeyProvider(local);
      const dek = await unwrapUnder(localKeys, 'v1', 'tenant-42', written.rows[0]!.wrapped_dek);
      localKeys.close();

      // What names this machine's servers: Temporal, a task queue of its own, moto as AWS.
      const here = {
        ...moto.env,
        DATABASE_URL: db.url,
        TEMPORAL_ADDRESS: temporal.address,
        REKEY_TASK_QUEUE: `docs-kms-move-${randomBytes(4).toString('hex')}`,
        REKEY_METRICS_PORT: '0',
        REKEY_TEMPORAL_METRICS_PORT: '0',
      };
      // The worker runs with what the block's first line exports ("on the worker and on every application instance").
      const exported = Object.fromEntries(
        [
          ...block.text
            .split('\n')[0]!
            .replace(/\s+#.*$/, '')
            .matchAll(/(\w+)=(\S+)/g),
        ].map((m) => [m[1]!, m[2]!]),
      );
      expect(exported).toEqual({ REKEY_KEY_PROVIDER: 'aws-kms', REKEY_AWS_KMS_LOCAL_KEYS: 'env' });
      worker = runScript({ env: {}, script: 'worker' }, { ...local, ...here, ...exported });
      await worker.until('rekey worker started', 90_000);

      // The block, as written, in bash, with `rekey` on the PATH as page 1's npm link puts it.
      const bin = path.join(app, 'bin');
      fs.mkdirSync(bin, { recursive: true });
      fs.writeFileSync(
        path.join(bin, 'rekey'),
        `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(projectRoot, 'dist/src/starter.js'))} "$@"\n`,
        { mode: 0o755 },
      );
      const moved = await run('bash', ['-eo', 'pipefail', '-c', block.text], {
        cwd: app,
        env: { ...env, ...local, ...here, PATH: `${bin}:${process.env.PATH}` },
      });
      expect(moved, moved.stderr).toMatchObject({ code: 0 });
      expect(moved.stdout).toMatch(
        /started rotation kek-rotation-rekey\.\S+ of target 'rekey' \('v1' → a new KEK \(id chosen at provision\)\)/,
      );

      // Promoted, moved and verified: the run is in its grace period, v2 a KMS key, every DEK the same under it.
      const handle = temporal.client.workflow.getHandle(await rotationIdIn(db.pool));
      await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 90_000 });
      const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
      expect((await registry.get('v2'))?.fingerprint).toMatch(/^kms:/);
      const { rows } = await db.pool.query<{ kek_id: string; wrapped_dek: Buffer }>(
        'SELECT kek_id, wrapped_dek FROM rekey.tenant_deks',
      );
      expect(rows.map((row) => [row.kek_id, row.wrapped_dek[0]])).toEqual([['v2', 0x02]]);
      // KMS's own Decrypt, under the row's documented encryption context: the DEK the application made under v1.
      const kms = new KMSClient(awsClientConfig(moto.env, 'KMS'));
      try {
        const opened = await kms.send(
          new DecryptCommand({
            CiphertextBlob: rows[0]!.wrapped_dek.subarray(1),
            EncryptionContext: { 'rekey:tenant': 'tenant-42', 'rekey:kek': 'v2' },
          }),
        );
        expect(Buffer.from(opened.Plaintext!).equals(dek)).toBe(true);
      } finally {
        kms.destroy();
        dek.fill(0);
      }
      await handle.terminate('the test has seen the move');
    }, 240_000);
  });
});
