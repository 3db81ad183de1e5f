// docs/03's TypeScript examples, as an application that depends on the clone compiles and runs them: the page's two
// blocks, in order, are the application's source; it imports rekey through node_modules/rekey (what
// `npm install /path/to/rekey` makes: a link to the clone, built) and has pg of its own; strict TypeScript compiles it
// against the built package, and node runs it against a fresh database, as page 2's worker left it (migrated).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { pageFences } from '../helpers/doc-fences';

const PAGE = 'docs/03-connect-your-application.md';

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
  let db: TestDatabase | undefined;
  afterAll(async () => {
    await db?.drop();
    fs.rmSync(app, { recursive: true, force: true });
  });

  it('compiles under strict TypeScript against the documented import paths of the built package, and encrypts and decrypts a tenant value on a fresh database, its DEK wrapped by the current KEK', async () => {
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
    const env = { PATH: process.env.PATH, HOME: process.env.HOME };

    const compiled = await run(
      process.execPath,
      [path.join(projectRoot, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'],
      { cwd: app, env },
    );
    expect(compiled, compiled.stdout).toMatchObject({ code: 0, stdout: '' });

    db = await createTestDatabase();
    const keys = { REKEY_KEK_v1: randomBytes(32), REKEY_KEK_v2: randomBytes(32) };
    const ran = await run(process.execPath, [path.join('dist', 'app.js')], {
      cwd: app,
      env: {
        ...env,
        DATABASE_URL: db.url,
        REKEY_KEK_v1: keys.REKEY_KEK_v1.toString('base64url'),
        REKEY_KEK_v2: keys.REKEY_KEK_v2.toString('base64url'),
        REKEY_CURRENT_KEK_ID: 'v2',
      },
    });
    expect(ran, ran.stderr).toMatchObject({ code: 0, stdout: 'webhook secret\n' });
    const { rows } = await db.pool.query<{ tenant_id: string; kek_id: string }>(
      'SELECT tenant_id, kek_id FROM rekey.tenant_deks',
    );
    expect(rows).toEqual([{ tenant_id: 'tenant-42', kek_id: 'v2' }]);
  }, 180_000);
});
