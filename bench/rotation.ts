// `npm run bench -- [tenants]`: the real rotation workflow through the dev server and a worker process, against
// the database's floors (the same UPDATE as one statement, and split over every core) and a naive one-off script on
// the same data. Writes bench/out/rotation-<tenants>.md, or the path after --out. `npm run bench -- [tenants] --kms`: a keyspace held in
// AWS KMS (moto) instead, its request rate against the configured one (bench/kms-rate.ts); `--transit` one held in Vault
// Transit (bench/transit-rate.ts).
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { randomBytes, randomUUID } from 'node:crypto';
import { REKEY_DEK_FORMAT } from '../src/codec/formats';
import { compileFormat } from '../src/codec/sealed-format';
import { ThreadedRowCrypto } from '../src/crypto/row-crypto';
import os from 'node:os';
import type { Pool } from 'pg';
import { WorkflowUpdateFailedError, type Client as TemporalClient } from '@temporalio/client';
import { startRotation } from '../src/client/rotations';
import { PRESETS } from '../src/targets/presets';
import { targetKeyspace } from '../src/targets/runtime';
import type { RotationRequest } from '../src/rotation/rotation-input';
import { seedTenants } from '../src/dev/tenants';
import { readToolchain } from '../src/dev/toolchain';
import type { DekCipher } from '../src/keyring/cipher';
import type { StoreDriver } from '../src/keyring/driver';
import { storeCipher, storedKek } from '../src/keyring/keyring';
import { KekRegistry } from '../src/store/kek-registry';
import { TargetStore } from '../src/store/target-store';
import { REKEY_PRESET } from '../src/targets/presets';
import { confirmStepUpdate, progressQuery, type RotationReport } from '../src/workflows';
import {
  cloneDatabase,
  CpuMeter,
  databaseFloor,
  envKeys,
  inMemoryBatches,
  DatabaseCpu,
  processCpuSeconds,
  freshDatabase,
  positionalArgs,
  writeResults,
  provenance,
  settle,
  sleep,
  spawnWorker,
  untilIdle,
  startServer,
  TASK_QUEUE,
  temporalClient,
} from './harness';
import { kmsBench } from './kms-rate';
import { transitBench } from './transit-rate';
import { seedMyceliumTable } from './mycelium';

const NAIVE_SAMPLE = Number(process.env.NAIVE_SAMPLE ?? 50_000);

/** What a user would write instead: a batch at a time, one tenant at a time, one UPDATE (and commit) per row. */
async function naiveRotation(db: Pool, keys: StoreDriver, from: string, to: string, limit: number): Promise<number> {
  const [fromKek, toKek] = [await storeCipher(keys, from), await storeCipher(keys, to)];
  try {
    return await naiveRows(db, fromKek, toKek, limit);
  } finally {
    fromKek.release();
    toKek.release();
  }
}

async function naiveRows(db: Pool, fromKek: DekCipher, toKek: DekCipher, limit: number): Promise<number> {
  const [from, to] = [fromKek.kekId, toKek.kekId];
  let cursor = '';
  let done = 0;
  while (done < limit) {
    const { rows } = await db.query<{ tenant_id: string; wrapped_dek: Buffer; version: string }>(
      'SELECT tenant_id, wrapped_dek, version FROM rekey.tenant_deks WHERE kek_id = $1 AND tenant_id > $2 ORDER BY tenant_id LIMIT 1000',
      [from, cursor],
    );
    if (rows.length === 0) break;
    for (const row of rows) {
      if (done >= limit) break;
      const wrapped = await fromKek.moveTo(toKek, row.tenant_id, row.wrapped_dek);
      await db.query(
        'UPDATE rekey.tenant_deks SET kek_id = $1, wrapped_dek = $2, version = version + 1 WHERE tenant_id = $3 AND version = $4',
        [to, wrapped, row.tenant_id, row.version],
      );
      done++;
      cursor = row.tenant_id;
    }
  }
  return done;
}

/** Rotates one target through the workflow, confirming a retire the application owns; the rewrap phase's figures. */
async function measure(
  client: TemporalClient,
  db: Pool,
  request: RotationRequest,
  meter: CpuMeter,
  /** Called with each phase as the run is first seen in it (polled every 100 ms while it watches). */
  onPhase?: (phase: string) => void,
): Promise<{
  report: RotationReport;
  seconds: number;
  rate: number;
  workflowId: string;
  cpu: ReturnType<CpuMeter['end']> | undefined;
}> {
  const keyspace = await targetKeyspace(db, PRESETS[request.target ?? BUILTIN_TARGET]);
  const started = await startRotation(client, request, { taskQueue: TASK_QUEUE, keyspace });
  // The benchmark is the operator: it confirms each step the application owns when the run asks (Mycelium's promote
  // and retire), and fails with the run's last progress if the run stops moving for ten minutes.
  let last = '';
  let movedAt = Date.now();
  // The processes' CPU over the rewrap phase, read when the run is first seen in it and when first seen past it.
  let inRewrap = false;
  let cpu: ReturnType<CpuMeter['end']> | undefined;
  let seenPhase: string | undefined;
  for (;;) {
    // A run that failed keeps answering its last progress: its status says it ended (result() then says why).
    if ((await started.handle.describe()).status.name !== 'RUNNING') break;
    const progress = await started.handle.query(progressQuery);
    if (onPhase && progress.phase !== seenPhase) {
      seenPhase = progress.phase;
      onPhase(progress.phase);
    }
    if (!inRewrap && progress.phase === 'rewrap') {
      inRewrap = true;
      meter.begin();
    } else if (inRewrap && cpu === undefined && progress.phase !== 'rewrap') {
      cpu = meter.end();
    }
    if (progress.outcome !== 'running') break;
    const now = JSON.stringify([progress.phase, progress.counters, progress.waiting?.step]);
    if (now !== last) {
      [last, movedAt] = [now, Date.now()];
      if (process.env.BENCH_VERBOSE)
        process.stderr.write(`${request.target ?? 'rekey'}: ${now} ${progress.note ?? ''}\n`);
    }
    if (Date.now() - movedAt > 600_000) throw new Error(`the rotation stopped moving: ${JSON.stringify(progress)}`);
    const step = progress.waiting?.kind === 'application' ? progress.waiting.step : undefined;
    if (step === 'promote' || step === 'retire') {
      // Refused when an earlier confirmation of the step was already taken in: nothing to do then.
      await started.handle
        .executeUpdate(confirmStepUpdate, { args: [{ step, note: 'benchmark' }] })
        .catch((err: unknown) => {
          if (!(err instanceof WorkflowUpdateFailedError)) throw err;
        });
    }
    await sleep((inRewrap && cpu === undefined) || onPhase ? 100 : 500);
  }
  const report = await started.handle.result();
  onPhase?.('ended');
  const phase = report.phases.rewrap!;
  const seconds = ((phase.endedAt ?? 0) - phase.startedAt) / 1000;
  return { report, seconds, rate: report.counters.rewrapped / seconds, workflowId: started.handle.workflowId, cpu };
}

/** The rewrap crypto alone, on every core of this process (its thread pool), over in-memory rows: µs per DEK. */
async function cryptoAlone(count: number, aesGcm: 'native' | 'node'): Promise<{ micros: number; threads: number }> {
  const crypto = new ThreadedRowCrypto(os.availableParallelism(), { ...process.env, REKEY_AES_GCM: aesGcm });
  const from = { kekId: 'v1', key: randomBytes(32) };
  const to = { kekId: 'v2', key: randomBytes(32) };
  const codec = compileFormat(REKEY_DEK_FORMAT);
  const batches = inMemoryBatches(count, from);
  try {
    await crypto.rewrap(codec, from, to, batches[0]!, { others: false, dryRun: false }); // threads up
    const t = process.hrtime.bigint();
    // Two batches in flight, as two slices would have them.
    let next = 0;
    const lane = async () => {
      while (next < batches.length)
        await crypto.rewrap(codec, from, to, batches[next++]!, { others: false, dryRun: false });
    };
    await Promise.all([lane(), lane()]);
    return { micros: Number(process.hrtime.bigint() - t) / 1e3 / count, threads: crypto.threads };
  } finally {
    from.key.fill(0);
    to.key.fill(0);
    await crypto.close();
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const tenants = Number(positionalArgs()[0] ?? 1_000_000);
  const toolchain = readToolchain();
  const server = await startServer(toolchain);
  if (args.includes('--kms') || args.includes('--transit')) {
    const { client, close } = await temporalClient(server.address);
    try {
      const rotation = {
        batchSize: Number(process.env.BATCH ?? 2_000),
        parallelism: Number(process.env.PARALLELISM ?? 2),
      };
      const bench = args.includes('--transit') ? transitBench : kmsBench;
      await bench({ tenants, toolchain, server, client, measure, rotation });
    } finally {
      await close();
      await server.stop();
    }
    return;
  }
  const database = await freshDatabase('rekey_bench');
  const { env: keyEnv, provider: keys } = envKeys(['v1', 'v2', 'v3'], 'v1');
  // The same worker also serves the mycelium preset: the old and the new token_secret, as Mycelium's guide has them.
  const [oldSecret, newSecret] = [randomUUID(), randomUUID()];
  keyEnv.MYC_OLD_TOKEN_SECRET = oldSecret;
  keyEnv.MYC_TOKEN_SECRET = newSecret;
  // Mycelium's table doubles the run: at ten million the run measures memory and history, on rekey's own table only.
  const withMycelium = (process.env.BENCH_MYCELIUM ?? (tenants <= 1_000_000 ? '1' : '0')) !== '0';
  const options = { batchSize: Number(process.env.BATCH ?? 2_000), parallelism: Number(process.env.PARALLELISM ?? 2) };
  // The all-core floor splits the UPDATE over as many statements as the rotation writes with (one connection per
  // slice running at once), and at least one per core.
  const floorStatements = Math.max(options.parallelism, os.availableParallelism());
  const { client, close } = await temporalClient(server.address);
  let worker: ReturnType<typeof spawnWorker> | undefined;
  let postgresCpu: DatabaseCpu | undefined;
  const copies: Awaited<ReturnType<typeof cloneDatabase>> = [];
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(`${line}\n`);
  };
  try {
    await new KekRegistry(database.pool, BUILTIN_TARGET).seedActive('v1', (await storedKek(keys, 'v1')).fingerprint);
    let t = Date.now();
    await seedTenants({ db: database.pool, keys, kekId: 'v1', count: tenants });
    say(`seeded ${tenants.toLocaleString('en-US')} tenants with COPY in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    // The floors' own copies of the same rows (same pages, indexes, trigger and registry), made before anything else
    // touches them; each is settled like the rotation's database before it is measured.
    await settle(database.pool);
    copies.push(
      ...(await cloneDatabase(database, ['rekey_bench_floor_all', 'rekey_bench_floor_one'], floorStatements + 2)),
    );
    const databases = [database, ...copies].map((d) => new URL(d.url).pathname.slice(1));
    worker = spawnWorker({ databaseUrl: database.url, address: server.address, keyEnv });
    const workerProcess = worker;
    await untilIdle(worker.child.pid); // its start is no part of the floor measured next
    // CPU of the worker, of PostgreSQL's backends (and autovacuum) for this run's databases, and of Temporal's server.
    postgresCpu = new DatabaseCpu(databases);
    const postgres = postgresCpu;
    const meter = new CpuMeter({
      worker: () => processCpuSeconds(workerProcess.child.pid),
      postgres: () => postgres.read(),
      temporal: () => processCpuSeconds(server.process.pid),
    });
    if (withMycelium) {
      t = Date.now();
      await seedMyceliumTable(database.pool, tenants, oldSecret);
      say(
        `seeded ${tenants.toLocaleString('en-US')} Mycelium tenants with COPY in ${((Date.now() - t) / 1000).toFixed(1)} s`,
      );
    }

    // The floors, each on its own copy of the rows the rotation started from, after the same settling: `v2` made
    // active there as the rotation makes it, so that the trigger lets the UPDATE write it. Measured just before and
    // just after the rotation, so that a machine whose load drifts weighs on the ratios as little as it can.
    const floor = async (copy: (typeof copies)[number], statements: number) => {
      const registry = new KekRegistry(copy.pool, BUILTIN_TARGET);
      await registry.register('v2', (await storedKek(keys, 'v2')).fingerprint);
      await registry.promote('v1', 'v2');
      await settle(copy.pool);
      return databaseFloor(copy.pool, 'v2', statements, meter);
    };
    const allCore = await floor(copies[0]!, floorStatements);
    // Each measured run starts from the same state: no dirty pages or WAL left by the write before it.
    await settle(database.pool);
    const builtin = await measure(
      client,
      database.pool,
      { from: 'v1', to: 'v2', gracePeriod: '1s', ...options },
      meter,
    );
    // The slice planner's reads (src/activities/rewrap.ts planSlices): a count of the rows on the KEK and the ids
    // that cut them into parts, on the copy the rotation's rows started as (settled as the rotation's was).
    await settle(copies[1]!.pool);
    t = Date.now();
    const plannerStore = new TargetStore(copies[1]!.pool, REKEY_PRESET, compileFormat(REKEY_PRESET.format));
    await plannerStore.inspect();
    await plannerStore.countOnLabel('v1');
    await plannerStore.boundaries('v1', [0.25, 0.5, 0.75]);
    const plannerSeconds = (Date.now() - t) / 1000;
    const oneStatement = await floor(copies[1]!, 1);
    let historyEvents = 0;
    let runs = 0;
    for await (const execution of client.workflow.list({ query: `WorkflowId = '${builtin.workflowId}'` })) {
      historyEvents += execution.historyLength ?? 0;
      runs++;
    }
    const workerPeak = worker.peakRssMiB();

    // The same number of tenants in Mycelium's own table and format, by the same worker, in the same run.
    let mycelium: Awaited<ReturnType<typeof measure>> | undefined;
    if (withMycelium) {
      await settle(database.pool);
      mycelium = await measure(
        client,
        database.pool,
        { target: 'mycelium', from: '1', to: '2', gracePeriod: '1s', ...options },
        meter,
      );
    }

    // The database refuses a DEK written under a KEK its registry does not let wrap: the naive script's v3 is made
    // the active KEK first, as any rotation's would be.
    const registry = new KekRegistry(database.pool, BUILTIN_TARGET);
    await registry.register('v3', (await storedKek(keys, 'v3')).fingerprint);
    await registry.promote('v2', 'v3');
    await settle(database.pool);
    t = Date.now();
    const naiveDone = await naiveRotation(database.pool, keys, 'v2', 'v3', Math.min(NAIVE_SAMPLE, tenants));
    const naiveSeconds = (Date.now() - t) / 1000;
    const naiveRate = naiveDone / naiveSeconds;

    const sample = Math.min(tenants, 200_000);
    const crypto = await cryptoAlone(sample, 'native').catch((err: unknown) => {
      say(`native AES-GCM not measured: ${err instanceof Error ? err.message : String(err)}`);
      return undefined;
    });
    const nodeCrypto = await cryptoAlone(sample, 'node');

    const n = (value: number) => Math.round(value).toLocaleString('en-US');
    say('');
    say(`| measure | value |`);
    say(`|---|---|`);
    say(`| tenants | ${tenants.toLocaleString('en-US')} |`);
    say(`| rewrap phase (workflow, wall) | ${builtin.seconds.toFixed(1)} s |`);
    say(`| rekey throughput | ${n(builtin.rate)} tenants/s |`);
    say(
      `| database floor, one statement (one UPDATE of all ${tenants.toLocaleString('en-US')} rows: same columns, indexes and trigger, no crypto; an identical copy) | ${oneStatement.seconds.toFixed(1)} s |`,
    );
    say(`| ratio rekey / one-statement floor | ${(builtin.seconds / oneStatement.seconds).toFixed(2)}x |`);
    say(
      `| all-core floor (the same UPDATE as ${floorStatements} concurrent statements on disjoint id ranges, another identical copy) | ${allCore.seconds.toFixed(1)} s |`,
    );
    say(`| **ratio rekey / all-core floor** | **${(builtin.seconds / allCore.seconds).toFixed(2)}x** |`);
    say(
      `| slice planner's reads (count and \`percentile_disc\` of the ${tenants.toLocaleString('en-US')} ids on the KEK, another identical copy) | ${plannerSeconds.toFixed(2)} s |`,
    );
    for (const [name, run] of [
      ['native AES-GCM', crypto],
      ["Node's AES-GCM", nodeCrypto],
    ] as const) {
      if (!run) continue;
      say(
        `| crypto alone, ${name}, ${run.threads} thread(s) (unwrap + wrap, ${sample.toLocaleString('en-US')} DEKs in memory) | ${run.micros.toFixed(2)} µs per DEK = ${((run.micros * tenants) / 1e6).toFixed(1)} s for ${tenants.toLocaleString('en-US')} |`,
      );
    }
    say(
      `| naive script (one UPDATE per row, ${n(naiveDone)} tenants) | ${n(naiveRate)} tenants/s, ${(tenants / naiveRate).toFixed(0)} s for all ${tenants.toLocaleString('en-US')} |`,
    );
    say(`| ratio rekey / naive | ${(builtin.rate / naiveRate).toFixed(1)}x |`);
    if (mycelium) {
      say(
        `| Mycelium-format target (\`tenant.encrypted_dek\`: text, base64, compare on the stored value): rewrap phase | ${mycelium.seconds.toFixed(1)} s, ${n(mycelium.rate)} tenants/s (${mycelium.report.outcome}) |`,
      );
      say(`| ratio Mycelium-format / built-in | ${((mycelium.rate / builtin.rate) * 100).toFixed(0)}% |`);
      const run = mycelium.cpu;
      if (run) {
        const perRow = (seconds: number | undefined) =>
          `${(((seconds ?? 0) * 1e6) / mycelium.report.counters.rewrapped).toFixed(1)} µs`;
        say(
          `| CPU per rewrapped row during the Mycelium-format rewrap phase | worker ${perRow(run.cpu.worker)}, PostgreSQL ${perRow(run.cpu.postgres)} |`,
        );
      }
    }
    const cpuLine = (what: string, run: ReturnType<CpuMeter['end']> | undefined) => {
      if (!run) return;
      const parts = Object.entries(run.cpu).map(([name, seconds]) => `${name} ${seconds.toFixed(1)} s`);
      const used = Object.values(run.cpu).reduce((a, b) => a + b, 0);
      const capacity = run.seconds * os.availableParallelism();
      say(
        `| CPU during ${what} (${run.seconds.toFixed(1)} s × ${os.availableParallelism()} cores = ${capacity.toFixed(1)} s) | ${parts.join(', ')}; ${((used / capacity) * 100).toFixed(0)}% of the machine |`,
      );
    };
    cpuLine('the rewrap phase', builtin.cpu);
    cpuLine('the one-statement floor', oneStatement);
    cpuLine('the all-core floor', allCore);
    if (builtin.cpu) {
      const perRow = (seconds: number | undefined) =>
        `${(((seconds ?? 0) * 1e6) / builtin.report.counters.rewrapped).toFixed(1)} µs`;
      say(
        `| CPU per rewrapped row during the rewrap phase | worker ${perRow(builtin.cpu.cpu.worker)}, PostgreSQL ${perRow(builtin.cpu.cpu.postgres)} |`,
      );
    }
    say(`| worker peak RSS | ${workerPeak} MiB |`);
    say(`| workflow history events | ${historyEvents} in ${runs} run(s) |`);
    say(
      `| outcome | ${builtin.report.outcome}, ${builtin.report.passes} pass(es), CAS conflicts ${builtin.report.counters.casConflicts} |`,
    );
    say('');
    const backend = process.env.REKEY_AES_GCM ?? 'auto';
    say(
      provenance(
        `${backend === 'auto' ? '' : `REKEY_AES_GCM=${backend} `}npm run bench -- ${tenants}`,
        `; worker: AES-GCM ${backend}, crypto threads ${process.env.REKEY_CRYPTO_THREADS ?? 'one per core'}`,
      ),
    );
    writeResults(`rotation-${tenants}${backend === 'auto' ? '' : `-${backend}`}.md`, `${lines.join('\n')}\n`);
  } finally {
    postgresCpu?.close();
    await worker?.kill();
    await close();
    for (const copy of copies) await copy.drop();
    await database.drop();
    await server.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
