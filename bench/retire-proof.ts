// Measures the retire step (retireKek, no Temporal) on N rows of rekey's own table, before and after the pre-pass:
// `npm run bench:retire -- [N] [--pairs <n>] [--before <commit>] [--out <file>]`. "Before" is the build of <commit> (main before the
// pre-pass, 34ce2b8 by default: `git archive` of its sources, compiled beside this checkout's node_modules), whose
// retire step proves every row under the KEK's registry row lock; "after" is this checkout's, which proves them first
// outside the lock and under it only the rows written since. Both run on byte-identical copies of one seeded database
// (v2 active, v1 decrypt-only, every row under v2), alternating A B A B … (3 pairs unless --pairs says) in one run. For each: the step's wall time, and
// the time it held the registry row's lock (from the locked transaction's start, which the registry records as
// `retired_at`, to the step's return).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import type { ScratchDatabase } from '../src/dev/databases';
import { createActivities } from '../src/activities';
import { seedTenants } from '../src/dev/tenants';
import { EnvKeyProvider } from '../src/keyring/drivers/env';
import { storedKek } from '../src/keyring/keyring';
import { projectRoot } from '../src/project-paths';
import { KekRegistry } from '../src/store/kek-registry';
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { cloneDatabase, freshDatabase, gitCommit, positionalArgs, provenance, settle, writeResults } from './harness';

const DAY = 86_400_000;

interface Build {
  name: string;
  createActivities: typeof createActivities;
  EnvKeyProvider: typeof EnvKeyProvider;
}

/** The build of `commit`: its src/ (and what compiling it needs) from git, compiled once, cached by commit. */
function buildOf(commit: string): Build {
  const full = execFileSync('git', ['-C', projectRoot, 'rev-parse', commit], { encoding: 'utf8' }).trim();
  const dir = path.join(os.tmpdir(), `rekey-bench-build-${full.slice(0, 12)}`);
  if (!fs.existsSync(path.join(dir, 'dist', 'src', 'activities', 'index.js'))) {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const archive = execFileSync(
      'git',
      ['-C', projectRoot, 'archive', '--format=tar', full, 'src', 'scripts', 'migrations', 'tsconfig.json'],
      { maxBuffer: 256 * 1024 * 1024 },
    );
    execFileSync('tar', ['-x', '-C', dir], { input: archive });
    fs.symlinkSync(path.join(projectRoot, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
    fs.copyFileSync(path.join(projectRoot, '.toolchain.json'), path.join(dir, '.toolchain.json'));
    fs.writeFileSync(
      path.join(dir, 'tsconfig.bench.json'),
      JSON.stringify({ extends: './tsconfig.json', include: ['src/**/*.ts', 'scripts/*.d.mts'] }),
    );
    execFileSync(path.join(projectRoot, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.bench.json'], {
      cwd: dir,
      stdio: 'inherit',
    });
  }
  /* eslint-disable @typescript-eslint/no-require-imports */
  const activities = require(path.join(dir, 'dist', 'src', 'activities', 'index.js')) as {
    createActivities: typeof createActivities;
  };
  const env = require(path.join(dir, 'dist', 'src', 'keyring', 'drivers', 'env.js')) as {
    EnvKeyProvider: typeof EnvKeyProvider;
  };
  /* eslint-enable @typescript-eslint/no-require-imports */
  return { name: `before (${full.slice(0, 7)})`, ...activities, ...env };
}

interface Run {
  build: string;
  seconds: number;
  lockSeconds: number;
}

async function retireOnce(build: Build, db: Pool, keyEnv: Record<string, string>): Promise<Run> {
  const activities = build.createActivities({ db, keys: new build.EnvKeyProvider(keyEnv, 'B') });
  const started = Date.now();
  await activities.retireKek({ from: 'v1', restoreWindowMs: DAY });
  const ended = Date.now();
  const v1 = await new KekRegistry(db, BUILTIN_TARGET).require('v1');
  if (v1.state !== 'retired' || !v1.retiredAt) throw new Error(`v1 is ${v1.state}, not retired`);
  return { build: build.name, seconds: (ended - started) / 1000, lockSeconds: (ended - v1.retiredAt.getTime()) / 1000 };
}

async function main(): Promise<void> {
  const count = Number(positionalArgs()[0] ?? 100_000);
  const at = process.argv.indexOf('--before');
  const before = buildOf(at >= 0 ? process.argv[at + 1]! : '34ce2b8');
  const after: Build = { name: `after (${gitCommit()})`, createActivities, EnvKeyProvider };
  const keyEnv = { B_KEK_v1: randomBytes(32).toString('base64url'), B_KEK_v2: randomBytes(32).toString('base64url') };
  const keys = new EnvKeyProvider(keyEnv, 'B');
  const seeded = await freshDatabase('rekey_bench_retire');
  const copies: ScratchDatabase[] = [];
  try {
    const registry = new KekRegistry(seeded.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', (await storedKek(keys, 'v1')).fingerprint);
    await registry.register('v2', (await storedKek(keys, 'v2')).fingerprint);
    await registry.promote('v1', 'v2');
    const t = Date.now();
    await seedTenants({ db: seeded.pool, keys, kekId: 'v2', count });
    await settle(seeded.pool);
    console.log(`seeded ${count} tenants under v2 (v1 decrypt-only) in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    const pairsAt = process.argv.indexOf('--pairs');
    const pairs = pairsAt >= 0 ? Number(process.argv[pairsAt + 1]) : 3;
    const order = Array.from({ length: pairs }, () => [before, after]).flat();
    copies.push(
      ...(await cloneDatabase(
        seeded,
        order.map((_, i) => `rekey_bench_retire_${process.pid}_${i}`),
      )),
    );
    const runs: Run[] = [];
    for (const [i, build] of order.entries()) {
      const run = await retireOnce(build, copies[i]!.pool, keyEnv);
      console.log(
        `${run.build}: ${run.seconds.toFixed(2)} s, of which ${run.lockSeconds.toFixed(2)} s holding the lock`,
      );
      runs.push(run);
    }
    const mean = (build: Build, field: 'seconds' | 'lockSeconds') => {
      const of = runs.filter((r) => r.build === build.name).map((r) => r[field]);
      return of.reduce((a, b) => a + b, 0) / of.length;
    };
    const lines = [
      `# retire on ${count.toLocaleString('en')} rows of rekey's own table: every row proved under the lock, then a pre-pass outside it`,
      '',
      '| run | build | step (s) | holding the registry row lock (s) |',
      '| --- | --- | --- | --- |',
      ...runs.map((r, i) => `| ${i + 1} | ${r.build} | ${r.seconds.toFixed(2)} | ${r.lockSeconds.toFixed(2)} |`),
      '',
      `Means: before ${mean(before, 'seconds').toFixed(2)} s (${mean(before, 'lockSeconds').toFixed(2)} s locked), after ${mean(after, 'seconds').toFixed(2)} s (${mean(after, 'lockSeconds').toFixed(2)} s locked): the step takes ${(mean(after, 'seconds') / mean(before, 'seconds')).toFixed(2)}x the time, and holds the lock ${(mean(after, 'lockSeconds') / mean(before, 'lockSeconds')).toFixed(3)}x as long.`,
      '',
      provenance(`npm run bench:retire -- ${count}`, `, load average ${os.loadavg()[0]!.toFixed(2)} at the end`),
      '',
    ];
    process.stdout.write(lines.join('\n'));
    writeResults(`retire-proof-${count}.md`, lines.join('\n'));
  } finally {
    await Promise.all(copies.map((c) => c.drop()));
    await seeded.drop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
