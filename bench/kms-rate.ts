// `npm run bench -- <tenants> --kms`: a keyspace whose KEKs never leave AWS KMS (here moto), rotated by the real
// workflow through a worker process (storeBench: the same for Vault Transit, bench/transit-rate.ts). Such a rotation is one ReEncrypt per row, paced by the worker's request pacer
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
import type { RemoteKeysDriver } from '../src/keyring/remote-keys';

export type Measure = (
  client: TemporalClient,
  /** The keyspace's database: the rotation runs under its keyspace's id. */
  db: Pool,
  request: RotationRequest,
  meter: CpuMeter,
  onPhase?: (phase: string) => void,
) => Promise<{ report: RotationReport; seconds: number; cpu: ReturnType<CpuMeter['end']> | undefined }>;

/** A key store the bench runs a rotation against, through the counting proxy. */
export interface BenchStore {
  /** How the results name its calls: 'KMS', 'Transit'. */
  kind: string;
  /** What it is here: 'AWS KMS (moto)'. */
  server: string;
  /** The command line's flag: '--kms'. */
  flag: string;
  /** The pacer's variables, with their defaults (src/env-vars.ts). */
  rate: [string, number];
  concurrency: [string, number];
  /** Starts the server: its address, the environment a client needs, its process (for its CPU), how to stop it. */
  start(): Promise<{
    endpoint: string;
    env: Record<string, string>;
    pid: number | undefined;
    children: boolean;
    stop(): Promise<void>;
  }>;
  /** The worker's key environment with the server at `endpoint` (the proxy). */
  keyEnv(endpoint: string): Record<string, string>;
  /** A store for seeding, at `endpoint` (the server itself), unpaced. */
  seeder(env: Record<string, string>): RemoteKeysDriver;
  /** What the results add to the command's provenance. */
  provenance: string;
  /** More of the worker's variables the command line names when they are set (REKEY_VAULT_TRANSIT_BATCH). */
  named?: string[];
}

/** Seeds `tenants` DEKs under the store's KEK `v1` (newDek, many at once, unpaced), then rotates them. */
export async function kmsBench(options: StoreBenchOptions & { toolchain: Toolchain }): Promise<void> {
  const prefix = `alias/rekey-bench/${randomUUID()}/`;
  return storeBench(options, {
    kind: 'KMS',
    server: 'AWS KMS (moto)',
    flag: '--kms',
    rate: ['REKEY_AWS_KMS_RATE', 500],
    concurrency: ['REKEY_AWS_KMS_CONCURRENCY', 16],
    start: async () => {
      const moto = await startMoto(options.toolchain.motoServer);
      return { endpoint: moto.endpoint, env: moto.env, pid: moto.pid, children: true, stop: () => moto.stop() };
    },
    keyEnv: (endpoint) => ({
      AWS_ENDPOINT_URL: endpoint,
      REKEY_KEY_PROVIDER: 'aws-kms',
      REKEY_AWS_KMS_ALIAS_PREFIX: prefix,
    }),
    seeder: (env) =>
      KmsKeys.fromEnv({
        ...env,
        REKEY_AWS_KMS_ALIAS_PREFIX: prefix,
        REKEY_AWS_KMS_RATE: '0',
        REKEY_AWS_KMS_CONCURRENCY: '64',
      }),
    provenance: `; moto ${path.basename(options.toolchain.motoServer)} as AWS KMS, on the same machine`,
  });
}

/** The rotation of a keyspace held in `store`: requests a row by phase, the rate reached against the one set. */
/** What a key-store bench (--kms, --transit) is given: the tenants to seed, the Temporal server, how to measure. */
export interface StoreBenchOptions {
  tenants: number;
  server: { address: string; process: { pid?: number } };
  client: TemporalClient;
  measure: Measure;
  rotation: { batchSize: number; parallelism: number };
}

export async function storeBench(options: StoreBenchOptions, store: BenchStore): Promise<void> {
  const { tenants, client } = options;
  const rate = Number(process.env[store.rate[0]] ?? store.rate[1]);
  const concurrency = Number(process.env[store.concurrency[0]] ?? store.concurrency[1]);
  if (!(rate > 0)) {
    throw new Error(`the ${store.kind} bench measures the rate reached against ${store.rate[0]}: set it above 0`);
  }
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(`${line}\n`);
  };
  const server = await store.start();
  // The worker reaches the store through a proxy that forwards every request and counts them by operation: the
  // requests of each phase of the whole rotation, not only the rewrap's. THROTTLE_EVERY=n answers every nth request
  // as AWS does when it throttles (ThrottlingException), as test/keys/aws-kms.test.ts does with 3; default none.
  const throttleEvery = Number(process.env.THROTTLE_EVERY ?? 0);
  const proxy = await throttlingProxy(server.endpoint, throttleEvery);
  const database = await freshDatabase(`rekey_bench_${store.kind.toLowerCase()}`);
  const keyEnv: Record<string, string> = {
    ...server.env,
    ...store.keyEnv(proxy.endpoint),
    [store.rate[0]]: String(rate),
    [store.concurrency[0]]: String(concurrency),
  };
  let worker: ReturnType<typeof spawnWorker> | undefined;
  const postgres = new DatabaseCpu([new URL(database.url).pathname.slice(1)]);
  const seeder = store.seeder({ ...server.env, ...store.keyEnv(server.endpoint) });
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
      `seeded ${tenants.toLocaleString('en-US')} tenants under a ${store.server} key in ${((Date.now() - t) / 1000).toFixed(1)} s`,
    );
    await settle(database.pool);
    worker = spawnWorker({ databaseUrl: database.url, address: options.server.address, keyEnv });
    const workerProcess = worker;
    await untilIdle(worker.child.pid);
    const serverName = store.kind === 'KMS' ? 'moto' : 'vault';
    const meter = new CpuMeter({
      worker: () => processCpuSeconds(workerProcess.child.pid),
      postgres: () => postgres.read(),
      temporal: () => processCpuSeconds(options.server.process.pid),
      [serverName]: () => processCpuSeconds(server.pid, server.children),
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
    say(`| tenants (KEKs in ${store.server}) | ${tenants.toLocaleString('en-US')} |`);
    say(`| rewrap phase (workflow, wall) | ${run.seconds.toFixed(1)} s, ${run.report.outcome} |`);
    say(`| ${store.kind} requests during the rewrap phase (the progress's keyStoreRequests) | ${n(requests)} |`);
    say(`| configured rate (${store.rate[0]}), concurrency (${store.concurrency[0]}) | ${n(rate)}/s, ${concurrency} |`);
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
        `| phase ${p.phase}: ${store.kind} requests, per row, wall time | ${n(p.requests)}, ${(p.requests / tenants).toFixed(2)}/row, ${p.wall}${p.ops ? ` (${p.ops})` : ''} |`,
      );
    }
    const rowCalls = perPhase.reduce((sum, p) => sum + p.requests, 0);
    say(
      `| **whole rotation: ${store.kind} requests per row** | **${(rowCalls / tenants).toFixed(2)}** (${n(rowCalls)}) |`,
    );
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
        `${[
          `${store.rate[0]}=${rate}`,
          ...['THROTTLE_EVERY', 'BATCH', store.concurrency[0], ...(store.named ?? [])]
            .filter((name) => process.env[name] !== undefined)
            .map((name) => `${name}=${process.env[name]}`),
        ].join(' ')} npm run bench -- ${tenants} ${store.flag}`,
        store.provenance,
      ),
    );
    writeResults(`${store.kind.toLowerCase()}-${tenants}.md`, `${lines.join('\n')}\n`);
  } finally {
    postgres.close();
    seeder.close();
    await worker?.kill();
    await database.drop();
    await proxy.close();
    await server.stop();
  }
}
