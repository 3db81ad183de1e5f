// Measures rewrapSlice alone (no Temporal) on N tenants: `npm run bench:slice -- [N] [slices] [--trigger-cost]
// [--mycelium [--sequential]]`. Each slice commits its progress with its writes, as a rotation's do. It prints the
// wall time, and the CPU this process (the engine and its crypto threads) and PostgreSQL spent per row.
// With --trigger-cost it measures, in one run, what the database's check of every DEK write (the kek-may-wrap
// trigger) costs the rewrap: the same rewrap on identically seeded databases, with the trigger and without it,
// alternating twice, and prints the ratio. With --mycelium it rotates a Mycelium-format `tenant` table instead
// (random UUIDs, as Mycelium makes them; with --sequential, UUIDs that grow with insertion, as rekey's own benchmark
// ids do: the same format, the other layout).
import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import { REKEY_DEK_FORMAT } from '../src/codec/formats';
import { compileFormat } from '../src/codec/sealed-format';
import { sharedRowCrypto } from '../src/crypto/row-crypto';
import { createDatabase, type ScratchDatabase } from '../src/dev/databases';
import { engineFor } from '../src/dev/engine';
import { seedTenants } from '../src/dev/tenants';
import { readToolchain } from '../src/dev/toolchain';
import { EnvKeyProvider } from '../src/keyring/drivers/env';
import type { StoreDriver } from '../src/keyring/driver';
import { MyceliumTokenSecrets } from '../src/keyring/drivers/mycelium-token-secret';
import { rewrapSlice } from '../src/rewrap/rewrap-slice';
import { KekRegistry } from '../src/store/kek-registry';
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { MYCELIUM_PRESET, REKEY_PRESET } from '../src/targets/presets';
import {
  cloneDatabase,
  CpuMeter,
  databaseFloor,
  gitCommit,
  inMemoryBatches,
  DatabaseCpu,
  processCpuSeconds,
  settle,
  threadCpuSeconds,
} from './harness';
import { seedMyceliumTable } from './mycelium';

interface Run {
  seconds: number;
  /** CPU µs per row: this process (engine and crypto threads), and PostgreSQL. */
  engineMicros: number;
  postgresMicros: number;
  /** The all-core floor on an identical copy, when measured. */
  floorSeconds?: number;
}

async function once(
  count: number,
  slices: number,
  trigger: boolean,
  mycelium: boolean,
  floor = false,
  order: 'random' | 'sequential' = 'random',
): Promise<Run> {
  const batchSize = Number(process.env.BATCH ?? 2_000);
  const name = `rekey_bench_${Date.now()}`;
  const database = await createDatabase(process.env.DATABASE_URL ?? readToolchain().databaseUrl, name, 4 * slices + 2);
  const db = database.pool;
  const [oldSecret, newSecret] = [randomUUID(), randomUUID()];
  const keys: StoreDriver = mycelium
    ? new MyceliumTokenSecrets(
        { current: { env: 'MYC_TOKEN_SECRET' }, old: { env: 'MYC_OLD_TOKEN_SECRET' } },
        { MYC_OLD_TOKEN_SECRET: oldSecret, MYC_TOKEN_SECRET: newSecret },
      )
    : new EnvKeyProvider(
        { B_KEK_v1: randomBytes(32).toString('base64url'), B_KEK_v2: randomBytes(32).toString('base64url') },
        'B',
      );
  const [from, to] = mycelium ? ['1', '2'] : ['v1', 'v2'];
  let copy: ScratchDatabase | undefined;
  try {
    const t = Date.now();
    if (mycelium) {
      await seedMyceliumTable(db, count, oldSecret, order);
    } else {
      await new KekRegistry(db, BUILTIN_TARGET).seedActive(
        'v1',
        (await keys.list()).find((k) => k.kekId === 'v1')!.fingerprint,
      );
      await seedTenants({ db, keys, kekId: 'v1', count });
    }
    await settle(db);
    if (!trigger) await db.query('ALTER TABLE rekey.tenant_deks DISABLE TRIGGER tenant_deks_update_kek_may_wrap');
    console.log(`seeded ${count} ${mycelium ? 'Mycelium ' : ''}tenants in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    // The floor's own copy of the same rows, made before the engine registers `to` (the copy registers it too).
    if (floor) [copy] = await cloneDatabase(database, [`${name}_floor`], slices + 2);

    const engine = await engineFor(db, mycelium ? MYCELIUM_PRESET : REKEY_PRESET, keys, from, to);
    const fractions = Array.from({ length: slices - 1 }, (_, i) => (i + 1) / slices);
    const boundaries = slices > 1 ? await engine.store.boundaries(from, fractions) : [];
    const bounds: (string | null)[] = ['', ...boundaries, null];
    const run = `bench-${Date.now()}`;
    await warmUp();
    await settle(db);
    const backends = new DatabaseCpu([name], false);
    const withVacuum = new DatabaseCpu([name]);
    const meter = new CpuMeter({
      engine: () => processCpuSeconds(process.pid),
      main: () => threadCpuSeconds(),
      postgres: () => backends.read(),
      autovacuum: () => withVacuum.read() - backends.read(),
    });
    meter.begin();
    const results = await Promise.all(
      bounds.slice(0, -1).map((after, i) =>
        rewrapSlice(engine, {
          after: after ?? '',
          until: bounds[i + 1] ?? null,
          batchSize,
          dryRun: false,
          progressKey: `${run}/pass-1/slice-${i}/part-0`,
        }),
      ),
    );
    const { seconds, cpu } = meter.end();
    backends.close();
    withVacuum.close();
    const rewrapped = results.reduce((sum, r) => sum + r.counters.rewrapped, 0);
    if (rewrapped !== count) throw new Error(`rewrapped ${rewrapped} of ${count} tenants`);
    const engineMicros = (cpu.engine! * 1e6) / rewrapped;
    const postgresMicros = (cpu.postgres! * 1e6) / rewrapped;
    console.log(
      `rewrapSlice${trigger ? '' : ' (trigger off)'}: ${rewrapped} tenants in ${seconds.toFixed(2)} s = ` +
        `${Math.round(rewrapped / seconds)} tenants/s (${slices} slice(s), batch ${batchSize}, ` +
        `peak RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB); CPU per row: ` +
        `engine ${engineMicros.toFixed(2)} µs (its main thread ${((cpu.main! * 1e6) / rewrapped).toFixed(2)} µs), PostgreSQL ${postgresMicros.toFixed(2)} µs ` +
        `(and its autovacuum ${((cpu.autovacuum! * 1e6) / rewrapped).toFixed(2)} µs)`,
    );
    if (!copy) return { seconds, engineMicros, postgresMicros };

    const registry = new KekRegistry(copy.pool, BUILTIN_TARGET);
    await registry.register(to, engine.to.fingerprint);
    await registry.promote(from, to);
    await settle(copy.pool);
    const statements = Math.max(slices, os.availableParallelism());
    const floorCpu = new DatabaseCpu([`${name}_floor`], false);
    const measured = await databaseFloor(copy.pool, to, statements, new CpuMeter({ postgres: () => floorCpu.read() }));
    floorCpu.close();
    console.log(
      `all-core floor: ${statements} concurrent UPDATEs of the same rows in ${measured.seconds.toFixed(2)} s, ` +
        `PostgreSQL ${((measured.cpu.postgres! * 1e6) / count).toFixed(2)} µs per row; ` +
        `ratio rewrapSlice / all-core floor ${(seconds / measured.seconds).toFixed(2)}x`,
    );
    return { seconds, engineMicros, postgresMicros, floorSeconds: measured.seconds };
  } finally {
    keys.close();
    await copy?.drop();
    await database.drop();
  }
}

/** The crypto threads up and their code compiled, so that the run does not count their start. */
async function warmUp(): Promise<void> {
  const from = { kekId: 'v1', key: randomBytes(32) };
  const to = { kekId: 'v2', key: randomBytes(32) };
  const crypto = sharedRowCrypto();
  for (const batch of inMemoryBatches(4 * 2_000, from)) {
    await crypto.rewrap(compileFormat(REKEY_DEK_FORMAT), from, to, batch, { others: false, dryRun: false });
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const count = Number(args[0] ?? 1_000_000);
  const slices = Number(args[1] ?? 1);
  const mycelium = process.argv.includes('--mycelium');
  if (!process.argv.includes('--trigger-cost')) {
    const order = process.argv.includes('--sequential') ? 'sequential' : 'random';
    await once(count, slices, true, mycelium, !mycelium && !process.argv.includes('--no-floor'), order);
    process.exit(0); // the crypto threads do not hold the process, but end it at once
  }
  const on: number[] = [];
  const off: number[] = [];
  for (let round = 0; round < 2; round++) {
    off.push((await once(count, slices, false, false)).seconds);
    on.push((await once(count, slices, true, false)).seconds);
  }
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  console.log(
    `trigger cost: ${sum(on).toFixed(2)} s with it against ${sum(off).toFixed(2)} s without, ` +
      `ratio ${(sum(on) / sum(off)).toFixed(3)} (${count} tenants x 2 rounds, ${os.cpus().length} cores, ` +
      `${new Date().toISOString().slice(0, 10)}, commit ${gitCommit()})`,
  );
  process.exit(0);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
