// Measures rewrapSlice alone (no Temporal) on N tenants: `npm run bench:slice -- [N] [slices] [--trigger-cost]`.
// With --trigger-cost it measures, in one run, what the database's check of every DEK write (the kek-may-wrap
// trigger) costs the rewrap: the same rewrap on identically seeded databases, with the trigger and without it,
// alternating twice, and prints the ratio.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { createDatabase } from '../src/dev/databases';
import { engineFor } from '../src/dev/engine';
import { seedTenants } from '../src/dev/tenants';
import { readToolchain } from '../src/dev/toolchain';
import { EnvKeyProvider } from '../src/keys/env-provider';
import { rewrapSlice } from '../src/rewrap/rewrap-slice';
import { KekRegistry } from '../src/store/kek-registry';
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { REKEY_PRESET } from '../src/targets/presets';
import { gitCommit } from './harness';

async function once(count: number, slices: number, trigger: boolean): Promise<number> {
  const batchSize = Number(process.env.BATCH ?? 2_000);
  const database = await createDatabase(
    process.env.DATABASE_URL ?? readToolchain().databaseUrl,
    `rekey_bench_${Date.now()}`,
    4 * slices + 2,
  );
  const db = database.pool;
  const keys = new EnvKeyProvider(
    { B_KEK_v1: randomBytes(32).toString('base64url'), B_KEK_v2: randomBytes(32).toString('base64url') },
    'B',
  );
  try {
    await new KekRegistry(db, BUILTIN_TARGET).seedActive('v1', keys.fingerprint('v1'));
    let t = Date.now();
    await seedTenants({ db, keys, kekId: 'v1', count });
    await db.query('VACUUM ANALYZE rekey.tenant_deks');
    await db.query('CHECKPOINT');
    if (!trigger) await db.query('ALTER TABLE rekey.tenant_deks DISABLE TRIGGER tenant_deks_update_kek_may_wrap');
    console.log(`seeded ${count} tenants in ${((Date.now() - t) / 1000).toFixed(1)} s`);

    const bounds: (string | null)[] = [''];
    for (let i = 1; i < slices; i++)
      bounds.push(`tenant-${String(Math.floor((count * i) / slices) - 1).padStart(8, '0')}`);
    bounds.push(null);
    const engine = await engineFor(db, REKEY_PRESET, keys);
    t = Date.now();
    const results = await Promise.all(
      bounds
        .slice(0, -1)
        .map((after, i) =>
          rewrapSlice(engine, { after: after ?? '', until: bounds[i + 1] ?? null, batchSize, dryRun: false }),
        ),
    );
    const seconds = (Date.now() - t) / 1000;
    const rewrapped = results.reduce((sum, r) => sum + r.counters.rewrapped, 0);
    console.log(
      `rewrapSlice${trigger ? '' : ' (trigger off)'}: ${rewrapped} tenants in ${seconds.toFixed(2)} s = ` +
        `${Math.round(rewrapped / seconds)} tenants/s (${slices} slice(s), batch ${batchSize}, ` +
        `peak RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB)`,
    );
    return seconds;
  } finally {
    keys.close();
    await database.drop();
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const count = Number(args[0] ?? 1_000_000);
  const slices = Number(args[1] ?? 1);
  if (!process.argv.includes('--trigger-cost')) {
    await once(count, slices, true);
    return;
  }
  const on: number[] = [];
  const off: number[] = [];
  for (let round = 0; round < 2; round++) {
    off.push(await once(count, slices, false));
    on.push(await once(count, slices, true));
  }
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  console.log(
    `trigger cost: ${sum(on).toFixed(2)} s with it against ${sum(off).toFixed(2)} s without, ` +
      `ratio ${(sum(on) / sum(off)).toFixed(3)} (${count} tenants x 2 rounds, ${os.cpus().length} cores, ` +
      `${new Date().toISOString().slice(0, 10)}, commit ${gitCommit()})`,
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
