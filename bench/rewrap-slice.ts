// Measures rewrapSlice alone (no Temporal) on N tenants: `npm run bench:slice -- [N] [slices]`.
import { randomBytes } from 'node:crypto';
import { createDatabase } from '../src/dev/databases';
import { readToolchain } from '../src/dev/toolchain';
import { seedTenants } from '../src/dev/tenants';
import { EnvKeyProvider } from '../src/keys/env-provider';
import { rewrapSlice } from '../src/rewrap/rewrap-slice';
import { engineFor } from '../src/dev/engine';
import { REKEY_PRESET } from '../src/targets/presets';

async function main(): Promise<void> {
  const count = Number(process.argv[2] ?? 1_000_000);
  const slices = Number(process.argv[3] ?? 1);
  const batchSize = Number(process.env.BATCH ?? 2_000);
  const database = await createDatabase(
    process.env.DATABASE_URL ?? readToolchain().databaseUrl,
    `rekey_bench_${Date.now()}`,
    4 * slices + 2,
  );
  const db = database.pool;
  try {
    const keys = new EnvKeyProvider(
      { B_KEK_v1: randomBytes(32).toString('base64url'), B_KEK_v2: randomBytes(32).toString('base64url') },
      'B',
    );
    let t = Date.now();
    await seedTenants({ db, keys, kekId: 'v1', count });
    await db.query('VACUUM ANALYZE rekey.tenant_deks');
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
      `rewrapSlice: ${rewrapped} tenants in ${seconds.toFixed(2)} s = ${Math.round(rewrapped / seconds)} tenants/s ` +
        `(${slices} slice(s), batch ${batchSize}, peak RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB)`,
    );
  } finally {
    await database.drop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
