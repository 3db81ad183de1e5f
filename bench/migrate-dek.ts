// `npm run bench:migrate -- [fields]`: `rekey migrate-dek` of a Mycelium-shaped database holding that many v1 values
// (two Telegram fields per tenant, as `tenant.meta` holds them), through the dev server and a worker process, against
// a naive per-value script on the same data in the same run, and against the database's own floor: the same jsonb_set
// writes of every field with no crypto, as many concurrent statements on disjoint id ranges as the migration writes
// with (at least one per core), on an identical copy of the seeded table settled the same way. Writes
// bench/out/migrate-dek-<fields>.md, or the path after --out.
//
// The fixture is written with node:crypto alone, from ../shared/seed-systems.md, not with rekey's codecs: v1 is
// base64(nonce ‖ ciphertext ‖ tag) under the KEK with no associated data; a DEK is 'v2:' + the same under the KEK
// bound to the tenant UUID's bytes; a v2 field is 'v2:' + the same under the DEK bound to the UUID bytes ‖ field name.
import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Client as TemporalClient } from '@temporalio/client';
import type { Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { startMigration } from '../src/client/migrations';
import { MYCELIUM_PRESET } from '../src/targets/presets';
import { targetKeyspace } from '../src/targets/runtime';
import { readToolchain } from '../src/dev/toolchain';
import type { MigrationReport } from '../src/workflows';
import {
  cloneDatabase,
  CpuMeter,
  DatabaseCpu,
  envKeys,
  freshDatabase,
  processCpuSeconds,
  provenance,
  sleep,
  spawnWorker,
  positionalArgs,
  writeResults,
  startServer,
  TASK_QUEUE,
  temporalClient,
  type WorkerProcess,
} from './harness';
import type { ScratchDatabase } from '../src/dev/databases';
import { myceliumKek, open, seal, uuidBytes } from './mycelium';

const FIELDS = ['telegram_bot_token', 'telegram_webhook_secret'] as const;
const SYSTEM_TENANT = '00000000-0000-0000-0000-000000000000';
const NAIVE_SAMPLE = Number(process.env.NAIVE_SAMPLE ?? 40_000);

/** `tenants` tenants, each with both Telegram fields as v1; every tenth without a DEK yet. */
async function seed(db: Pool, tenants: number, kek: Buffer): Promise<void> {
  await db.query(`
    CREATE TABLE public.tenant (id uuid PRIMARY KEY, name text NOT NULL, meta jsonb NOT NULL DEFAULT '{}'::jsonb,
      encrypted_dek TEXT, kek_version INTEGER NOT NULL DEFAULT 1);
    CREATE TABLE public."user" (id uuid PRIMARY KEY, email text NOT NULL, mfa jsonb);
    CREATE TABLE public.webhook (id uuid PRIMARY KEY, url text NOT NULL, secret jsonb);`);
  await db.query(`INSERT INTO public.tenant (id, name, encrypted_dek) VALUES ($1, 'system', $2)`, [
    SYSTEM_TENANT,
    `v2:${seal(kek, randomBytes(32), uuidBytes(SYSTEM_TENANT))}`,
  ]);
  const client = await db.connect();
  try {
    const sink = client.query(copyFrom('COPY public.tenant (id, name, meta, encrypted_dek) FROM STDIN'));
    await pipeline(Readable.from(chunks()), sink);
  } finally {
    client.release();
  }
  await db.query('VACUUM ANALYZE');

  function* chunks(): Generator<string> {
    for (let start = 0; start < tenants; start += 5_000) {
      const lines: string[] = [];
      for (let i = start; i < Math.min(tenants, start + 5_000); i++) {
        const id = randomUUID();
        const meta = JSON.stringify({
          telegram_bot_token: seal(kek, Buffer.from(`${i}:AAH${randomBytes(16).toString('hex')}`)),
          telegram_webhook_secret: seal(kek, Buffer.from(`hook-${randomBytes(12).toString('hex')}`)),
          locale: 'pt-BR',
        });
        const dek = i % 10 === 0 ? '\\N' : `v2:${seal(kek, randomBytes(32), uuidBytes(id))}`;
        lines.push(`${id}\ttenant ${i}\t${meta}\t${dek}\n`);
      }
      yield lines.join('');
    }
  }
}

/**
 * What one writes without rekey, as Mycelium's own tool does: tenant by tenant, each value opened and sealed, one
 * UPDATE (and commit) per value; a missing DEK provisioned with one more UPDATE. On the first `limit` values.
 */
async function naiveMigration(db: Pool, kek: Buffer, limit: number): Promise<number> {
  let done = 0;
  let cursor = '00000000-0000-0000-0000-000000000000';
  while (done < limit) {
    const { rows } = await db.query<{ id: string; meta: Record<string, string>; encrypted_dek: string | null }>(
      'SELECT id::text, meta, encrypted_dek FROM public.tenant WHERE id > $1 ORDER BY id LIMIT 500',
      [cursor],
    );
    if (rows.length === 0) break;
    for (const row of rows) {
      if (done >= limit) break;
      cursor = row.id;
      let dek: Buffer;
      if (row.encrypted_dek) dek = open(kek, row.encrypted_dek.slice(3), uuidBytes(row.id));
      else {
        dek = randomBytes(32);
        await db.query('UPDATE public.tenant SET encrypted_dek = $2 WHERE id = $1 AND encrypted_dek IS NULL', [
          row.id,
          `v2:${seal(kek, dek, uuidBytes(row.id))}`,
        ]);
      }
      for (const field of FIELDS) {
        const value = row.meta[field];
        if (!value || value.startsWith('v2:')) continue;
        const plaintext = open(kek, value);
        const sealed = `v2:${seal(dek, plaintext, Buffer.concat([uuidBytes(row.id), Buffer.from(field)]))}`;
        plaintext.fill(0);
        await db.query(
          `UPDATE public.tenant SET meta = jsonb_set(meta, $2::text[], to_jsonb($3::text)) WHERE id = $1`,
          [row.id, [field], sealed],
        );
        done++;
      }
      dek.fill(0);
    }
  }
  return done;
}

/** Every field of a sample of tenants reads back, under the tenant's DEK, as v2 (independent of rekey's code). */
async function checkSample(db: Pool, kek: Buffer): Promise<number> {
  const { rows } = await db.query<{ id: string; meta: Record<string, string>; encrypted_dek: string }>(
    `SELECT id::text, meta, encrypted_dek FROM public.tenant WHERE id <> $1 ORDER BY random() LIMIT 2000`,
    [SYSTEM_TENANT],
  );
  for (const row of rows) {
    const dek = open(kek, row.encrypted_dek.slice(3), uuidBytes(row.id));
    for (const field of FIELDS) {
      const value = row.meta[field]!;
      if (!value.startsWith('v2:')) throw new Error(`tenant ${row.id}: ${field} is still v1`);
      open(dek, value.slice(3), Buffer.concat([uuidBytes(row.id), Buffer.from(field)]));
    }
  }
  return rows.length;
}

/**
 * The database's floor for the migration: every field written as the migration writes it (one jsonb_set per field,
 * one chain per row, a value of the same length as its v2 form), with no crypto and no round trips, split over
 * `statements` concurrent statements on disjoint id ranges of about equal size, each on a connection opened before
 * the clock starts. Wall seconds.
 */
async function migrationFloor(db: Pool, statements: number, meter: CpuMeter): Promise<ReturnType<CpuMeter['end']>> {
  const fractions = Array.from({ length: statements - 1 }, (_, i) => (i + 1) / statements);
  const { rows } = await db.query<{ boundaries: string[] | null }>(
    `SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY id)::text[] AS boundaries FROM public.tenant`,
    [fractions],
  );
  const bounds: (string | null)[] = [null, ...(statements > 1 ? (rows[0]?.boundaries ?? []) : []), null];
  const chain = FIELDS.reduce(
    (meta, field) => `jsonb_set(${meta}, '{${field}}', to_jsonb('v2:' || (meta ->> '${field}')))`,
    'meta',
  );
  const clients = await Promise.all(bounds.slice(1).map(() => db.connect()));
  try {
    meter.begin();
    await Promise.all(
      clients.map((client, i) =>
        client.query(
          `UPDATE public.tenant SET meta = ${chain}
           WHERE ($1::uuid IS NULL OR id > $1::uuid) AND ($2::uuid IS NULL OR id <= $2::uuid)
             AND left(meta ->> '${FIELDS[0]}', 3) <> 'v2:'`,
          [bounds[i], bounds[i + 1]],
        ),
      ),
    );
    return meter.end();
  } finally {
    for (const client of clients) client.release();
  }
}

/**
 * Where the run's wall time went, from its history: each activity type's span (first scheduled to last completed),
 * and how long its parts took summed (started to completed): a part's time is the worker's and PostgreSQL's, the rest
 * waits for a task to be handed out or taken back.
 */
async function timeByStep(client: TemporalClient, workflowId: string): Promise<string> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) =>
    Number(t?.seconds ?? 0) * 1000 + (t?.nanos ?? 0) / 1e6;
  const scheduled = new Map<string, { type: string; at: number; started?: number }>();
  const spans = new Map<string, { first: number; last: number; busy: number; count: number }>();
  for (const event of history.events ?? []) {
    const at = ms(event.eventTime);
    const id = String(event.eventId);
    const a = event.activityTaskScheduledEventAttributes;
    if (a) scheduled.set(id, { type: a.activityType?.name ?? '?', at });
    const started = event.activityTaskStartedEventAttributes;
    if (started) scheduled.get(String(started.scheduledEventId))!.started = at;
    const done = event.activityTaskCompletedEventAttributes;
    if (done) {
      const task = scheduled.get(String(done.scheduledEventId))!;
      const span = spans.get(task.type) ?? { first: task.at, last: at, busy: 0, count: 0 };
      span.first = Math.min(span.first, task.at);
      span.last = Math.max(span.last, at);
      span.busy += at - (task.started ?? task.at);
      span.count += 1;
      spans.set(task.type, span);
    }
  }
  return [...spans]
    .map(
      ([type, s]) =>
        `${type} ×${s.count}: ${((s.last - s.first) / 1000).toFixed(1)} s span, ${(s.busy / 1000).toFixed(1)} s running`,
    )
    .join('; ');
}

/** The result, or a failure naming the worker's log as soon as the worker process ends by itself. */
async function untilWorkerEnds<T>(worker: WorkerProcess, result: Promise<T>): Promise<T> {
  let ended = false;
  const watch = (async () => {
    while (!ended) {
      if (worker.crashed()) throw new Error('the worker process ended: see bench/results/worker.log.tmp');
      await sleep(500);
    }
  })();
  try {
    return await Promise.race([result, watch.then(() => result)]);
  } finally {
    ended = true;
  }
}

async function settle(db: Pool): Promise<void> {
  await db.query('VACUUM ANALYZE');
  await db.query('CHECKPOINT').catch(() => undefined);
}

async function main(): Promise<void> {
  const fields = Number(positionalArgs()[0] ?? 1_000_000);
  const tenants = Math.ceil(fields / FIELDS.length);
  const toolchain = readToolchain();
  const server = await startServer(toolchain);
  const database = await freshDatabase('rekey_bench_migrate');
  const secret = randomUUID();
  const kek = myceliumKek(secret);
  const { client, close } = await temporalClient(server.address);
  // The worker also serves rekey's own target, which needs a KEK of its own to start.
  const { env: keyEnv } = envKeys(['v1'], 'v1');
  const worker = spawnWorker({
    databaseUrl: database.url,
    address: server.address,
    keyEnv: { ...keyEnv, MYC_TOKEN_SECRET: secret },
  });
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(`${line}\n`);
  };
  const options = { batchSize: Number(process.env.BATCH ?? 1_000), parallelism: Number(process.env.PARALLELISM ?? 2) };
  // As many statements as the migration writes with (one connection per part running at once), at least one per core.
  const floorStatements = Math.max(options.parallelism, os.availableParallelism());
  let copy: ScratchDatabase | undefined;
  try {
    let t = Date.now();
    await seed(database.pool, tenants, kek);
    const total = tenants * FIELDS.length;
    say(
      `seeded ${tenants.toLocaleString('en-US')} tenants, ${total.toLocaleString('en-US')} v1 fields, with COPY in ${((Date.now() - t) / 1000).toFixed(1)} s`,
    );

    // The floor's own copy of the seeded rows (same pages and indexes), made before anything touches them.
    await settle(database.pool);
    [copy] = await cloneDatabase(database, ['rekey_bench_migrate_floor'], floorStatements + 2);
    // CPU of the worker and of PostgreSQL's backends for this run's two databases.
    const postgres = new DatabaseCpu([database.url, copy!.url].map((url) => new URL(url).pathname.slice(1)));
    const meter = new CpuMeter({ worker: () => processCpuSeconds(worker.child.pid), postgres: () => postgres.read() });
    await settle(copy!.pool);
    const loadAtFloor = os.loadavg()[0]!;
    const floor = await migrationFloor(copy!.pool, floorStatements, meter);
    const floorSeconds = floor.seconds;
    await copy!.drop();
    copy = undefined;

    // The naive script first, on a sample; then the sample is put back as it was, so rekey starts from the seed.
    await database.pool.query('CREATE TABLE public.saved AS SELECT id, meta, encrypted_dek FROM public.tenant');
    await settle(database.pool);
    t = Date.now();
    const naiveDone = await naiveMigration(database.pool, kek, Math.min(NAIVE_SAMPLE, total));
    const naiveSeconds = (Date.now() - t) / 1000;
    const naiveRate = naiveDone / naiveSeconds;
    await database.pool.query(
      `UPDATE public.tenant t SET meta = s.meta, encrypted_dek = s.encrypted_dek FROM public.saved s
       WHERE s.id = t.id AND (t.meta IS DISTINCT FROM s.meta OR t.encrypted_dek IS DISTINCT FROM s.encrypted_dek)`,
    );
    await database.pool.query('DROP TABLE public.saved');
    await settle(database.pool);

    const loadAtStart = os.loadavg()[0]!;
    meter.begin();
    t = Date.now();
    const started = await startMigration(
      client,
      { target: 'mycelium', kekVersion: '1', ...options },
      { taskQueue: TASK_QUEUE, keyspace: await targetKeyspace(database.pool, MYCELIUM_PRESET) },
    );
    const report: MigrationReport = await untilWorkerEnds(worker, started.handle.result());
    const seconds = (Date.now() - t) / 1000;
    const migrationCpu = meter.end();
    postgres.close();
    const rate = report.totals.migrated / seconds;
    let historyEvents = 0;
    let runs = 0;
    for await (const execution of client.workflow.list({ query: `WorkflowId = '${started.handle.workflowId}'` })) {
      historyEvents += execution.historyLength ?? 0;
      runs++;
    }
    const steps = await timeByStep(client, started.handle.workflowId);
    const checked = await checkSample(database.pool, kek);
    if (report.totals.migrated !== total || report.legacyLeft !== 0) {
      throw new Error(`the migration moved ${report.totals.migrated} of ${total} values; ${report.legacyLeft} left`);
    }

    const n = (value: number) => Math.round(value).toLocaleString('en-US');
    say('');
    say('| measure | value |');
    say('|---|---|');
    say(`| v1 fields (two Telegram fields × ${n(tenants)} tenants, a tenth of them without a DEK) | ${n(total)} |`);
    say(`| rekey migrate-dek (workflow start to result, wall) | ${seconds.toFixed(1)} s |`);
    say(`| rekey throughput | ${n(rate)} fields/s |`);
    say(`| DEKs provisioned | ${n(report.totals.deksProvisioned)} |`);
    say(
      `| naive script (one UPDATE per value, ${n(naiveDone)} values) | ${n(naiveRate)} fields/s, ${(total / naiveRate).toFixed(0)} s for all ${n(total)} |`,
    );
    say(`| ratio rekey / naive | ${(rate / naiveRate).toFixed(1)}x |`);
    say(
      `| all-core floor (every field's jsonb_set, one chain per row, no crypto: ${floorStatements} concurrent statements on disjoint id ranges of an identical copy) | ${floorSeconds.toFixed(1)} s, ${n(total / floorSeconds)} fields/s |`,
    );
    say(`| **ratio migrate-dek / all-core floor** | **${(seconds / floorSeconds).toFixed(2)}x** |`);
    const cpuLine = (what: string, run: ReturnType<CpuMeter['end']>) => {
      const parts = Object.entries(run.cpu).map(([name, cpu]) => `${name} ${cpu.toFixed(1)} s`);
      const used = Object.values(run.cpu).reduce((a, b) => a + b, 0);
      const capacity = run.seconds * os.availableParallelism();
      say(
        `| CPU during ${what} (${run.seconds.toFixed(1)} s × ${os.availableParallelism()} cores = ${capacity.toFixed(1)} s) | ${parts.join(', ')}; ${((used / capacity) * 100).toFixed(0)}% of the machine |`,
      );
    };
    cpuLine('the migration', migrationCpu);
    say(`| the migration's activities (from its history) | ${steps} |`);
    cpuLine('the all-core floor', floor);
    say(
      `| machine load (1-minute average, all processes) | ${loadAtFloor.toFixed(1)} before the floor, ${loadAtStart.toFixed(1)} before the migration |`,
    );
    say(`| worker peak RSS | ${worker.peakRssMiB()} MiB |`);
    say(`| workflow history events | ${historyEvents} in ${runs} run(s) |`);
    say(`| check | every value moved, none left; ${checked} random tenants' fields open under their DEK as v2 |`);
    say('');
    say(
      provenance(
        `npm run bench:migrate -- ${fields}`,
        `; batch ${options.batchSize}, parallelism ${options.parallelism}`,
      ),
    );
    writeResults(`migrate-dek-${fields}.md`, `${lines.join('\n')}\n`);
  } finally {
    await copy?.drop();
    await worker.kill();
    await close();
    await database.drop();
    await server.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
