// `npm run bench -- <tenants> --kms`: a keyspace whose KEKs never leave AWS KMS (here moto), rotated by the real
// workflow through a worker process. Such a rotation is one ReEncrypt per row, paced by the worker's request pacer
// (REKEY_AWS_KMS_RATE, REKEY_AWS_KMS_CONCURRENCY): what bounds it is the key store's quota, not CPU, and what the
// bench reports is the request rate reached against the rate configured. Writes bench/out/kms-<tenants>.md (or --out <path>).
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import type { Client as TemporalClient } from '@temporalio/client';
import type { Pool } from 'pg';
import { startMoto } from '../src/dev/moto';
import { throttlingProxy } from '../test/helpers/throttling-proxy';
import type { Toolchain } from '../src/dev/toolchain';
import { KmsKeys } from '../src/keyring/drivers/aws-kms';
import type { RotationRequest } from '../src/rotation/rotation-input';
import { KekRegistry } from '../src/store/kek-registry';
import { BUILTIN_TARGET } from '../src/targets/builtin';
import type { RotationReport } from '../src/workflows';
import {
  CpuMeter,
  DatabaseCpu,
  freshDatabase,
  processCpuSeconds,
  provenance,
  settle,
  spawnWorker,
  writeResults,
  untilIdle,
} from './harness';
import { generateKek, storedKek } from '../src/keyring/keyring';

export type Measure = (
  client: TemporalClient,
  /** The keyspace's database: the rotation runs under its keyspace's id. */
  db: Pool,
  request: RotationRequest,
  meter: CpuMeter,
  onPhase?: (phase: string) => void,
) => Promise<{ report: RotationReport; seconds: number; cpu: ReturnType<CpuMeter['end']> | undefined }>;

/** Seeds `tenants` DEKs under the KMS KEK `v1` (GenerateDataKey, many at once, unpaced), then rotates them. */
export async function kmsBench(options: {
  tenants: number;
  toolchain: Toolchain;
  server: { address: string; process: { pid?: number } };
  client: TemporalClient;
  measure: Measure;
  rotation: { batchSize: number; parallelism: number };
}): Promise<void> {
  const { tenants, client } = options;
  const rate = Number(process.env.REKEY_AWS_KMS_RATE ?? 500);
  const concurrency = Number(process.env.REKEY_AWS_KMS_CONCURRENCY ?? 16);
  if (!(rate > 0))
    throw new Error('the KMS bench measures the rate reached against REKEY_AWS_KMS_RATE: set it above 0');
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(`${line}\n`);
  };
  const moto = await startMoto(options.toolchain.motoServer);
  // The worker reaches moto through a proxy that forwards every request and counts them by operation: the requests of
  // each phase of the whole rotation, not only the rewrap's. THROTTLE_EVERY=n answers every nth request as AWS does
  // when it throttles (ThrottlingException), as test/keys/aws-kms.test.ts does with 3; default none.
  const throttleEvery = Number(process.env.THROTTLE_EVERY ?? 0);
  const proxy = await throttlingProxy(moto.endpoint, throttleEvery);
  const database = await freshDatabase('rekey_bench_kms');
  const keyEnv: Record<string, string> = {
    ...moto.env,
    AWS_ENDPOINT_URL: proxy.endpoint,
    REKEY_KEY_PROVIDER: 'aws-kms',
    REKEY_AWS_KMS_ALIAS_PREFIX: `alias/rekey-bench/${randomUUID()}/`,
    REKEY_AWS_KMS_RATE: String(rate),
    REKEY_AWS_KMS_CONCURRENCY: String(concurrency),
  };
  let worker: ReturnType<typeof spawnWorker> | undefined;
  const postgres = new DatabaseCpu([new URL(database.url).pathname.slice(1)]);
  const seeder = KmsKeys.fromEnv({
    ...keyEnv,
    AWS_ENDPOINT_URL: moto.endpoint,
    REKEY_AWS_KMS_RATE: '0',
    REKEY_AWS_KMS_CONCURRENCY: '64',
  });
  try {
    await generateKek(seeder, 'v1');
    await new KekRegistry(database.pool, BUILTIN_TARGET).seedActive('v1', (await storedKek(seeder, 'v1')).fingerprint);
    let t = Date.now();
    const chunk = 1_000;
    for (let start = 0; start < tenants; start += chunk) {
      const ids = Array.from(
        { length: Math.min(chunk, tenants - start) },
        (_, i) => `tenant-${String(start + i).padStart(8, '0')}`,
      );
      const wrapped: Buffer[] = new Array<Buffer>(ids.length);
      let next = 0;
      const lane = async () => {
        while (next < ids.length) {
          const i = next++;
          const made = await seeder.newDek('v1', ids[i]!);
          made.dek.fill(0);
          wrapped[i] = made.wrapped;
        }
      };
      await Promise.all(Array.from({ length: 32 }, lane));
      await database.pool.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek)
         SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
        [ids, wrapped],
      );
    }
    say(
      `seeded ${tenants.toLocaleString('en-US')} tenants under a KMS key (moto) in ${((Date.now() - t) / 1000).toFixed(1)} s`,
    );
    await settle(database.pool);
    worker = spawnWorker({ databaseUrl: database.url, address: options.server.address, keyEnv });
    const workerProcess = worker;
    await untilIdle(worker.child.pid);
    const meter = new CpuMeter({
      worker: () => processCpuSeconds(workerProcess.child.pid),
      postgres: () => postgres.read(),
      temporal: () => processCpuSeconds(options.server.process.pid),
      moto: () => processCpuSeconds(moto.pid, true),
    });
    t = Date.now();
    // The requests the proxy had forwarded when the run was first seen in each phase (polled every 100 ms: a call
    // in flight at a phase's end may count in the next).
    const forwarded = () => [...proxy.forwarded.values()].reduce((a, b) => a + b, 0);
    const byOperation = () => new Map(proxy.forwarded);
    const seen: { phase: string; requests: number; operations: Map<string, number> }[] = [];
    const run = await options.measure(
      client,
      database.pool,
      { from: 'v1', to: 'new', gracePeriod: '1s', ...options.rotation },
      meter,
      (phase) => seen.push({ phase, requests: forwarded(), operations: byOperation() }),
    );
    const requests = run.report.counters.keyStoreRequests ?? 0;
    const reached = requests / run.seconds;
    const n = (value: number) => Math.round(value).toLocaleString('en-US');
    say('');
    say(`| measure | value |`);
    say(`|---|---|`);
    say(`| tenants (KEKs in AWS KMS: moto) | ${tenants.toLocaleString('en-US')} |`);
    say(`| rewrap phase (workflow, wall) | ${run.seconds.toFixed(1)} s, ${run.report.outcome} |`);
    say(`| KMS requests during the rewrap phase (ReEncrypt, one per row) | ${n(requests)} |`);
    say(
      `| configured rate (REKEY_AWS_KMS_RATE), concurrency (REKEY_AWS_KMS_CONCURRENCY) | ${n(rate)}/s, ${concurrency} |`,
    );
    say(`| requests per second reached | ${n(reached)}/s |`);
    if (throttleEvery > 0) {
      say(
        `| requests throttled by the proxy (THROTTLE_EVERY=${throttleEvery}; each retried by the SDK after its backoff) | ${n(proxy.throttled)} |`,
      );
    }
    say(`| **ratio reached / configured rate** | **${((reached / rate) * 100).toFixed(0)}%** |`);
    // Each phase's requests (all operations, as the proxy saw them), per row, and its wall time (the workflow's own
    // phase times).
    const perPhase = seen.slice(0, -1).map((entry, i) => {
      const next = seen[i + 1]!;
      const ops = [...next.operations]
        .map(([op, count]) => [op, count - (entry.operations.get(op) ?? 0)] as const)
        .filter(([, count]) => count > 0)
        .map(([op, count]) => `${op} ${count}`)
        .join(', ');
      const times = run.report.phases[entry.phase as keyof RotationReport['phases']];
      const wall = times?.endedAt !== undefined ? `${((times.endedAt - times.startedAt) / 1000).toFixed(1)} s` : '–';
      return { phase: entry.phase, requests: next.requests - entry.requests, ops, wall };
    });
    for (const p of perPhase) {
      say(
        `| phase ${p.phase}: KMS requests, per row, wall time | ${n(p.requests)}, ${(p.requests / tenants).toFixed(2)}/row, ${p.wall}${p.ops ? ` (${p.ops})` : ''} |`,
      );
    }
    const rowCalls = perPhase.reduce((sum, p) => sum + p.requests, 0);
    say(`| **whole rotation: KMS requests per row** | **${(rowCalls / tenants).toFixed(2)}** (${n(rowCalls)}) |`);
    if (run.cpu) {
      const parts = Object.entries(run.cpu.cpu).map(([name, seconds]) => `${name} ${seconds.toFixed(1)} s`);
      say(
        `| CPU during the rewrap phase (${run.cpu.seconds.toFixed(1)} s × ${os.availableParallelism()} cores) | ${parts.join(', ')} |`,
      );
    }
    say(
      `| outcome | ${run.report.outcome}, ${run.report.passes} pass(es), rewrapped ${n(run.report.counters.rewrapped)}, CAS conflicts ${run.report.counters.casConflicts} |`,
    );
    say('');
    say(
      provenance(
        `REKEY_AWS_KMS_RATE=${rate}${throttleEvery > 0 ? ` THROTTLE_EVERY=${throttleEvery}` : ''}${process.env.BATCH ? ` BATCH=${process.env.BATCH}` : ''} npm run bench -- ${tenants} --kms`,
        `; moto ${path.basename(options.toolchain.motoServer)} as AWS KMS, on the same machine`,
      ),
    );
    writeResults(`kms-${tenants}.md`, `${lines.join('\n')}\n`);
  } finally {
    postgres.close();
    seeder.close();
    await worker?.kill();
    await database.drop();
    await proxy.close();
    await moto.stop();
  }
}
