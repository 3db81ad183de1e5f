// Where PostgreSQL's CPU a rewrapped row goes, against the floor (issue 27): `npm run bench:pgside -- [N] [variants]
// [rounds] [--explain]`. Seeds N tenants of rekey's own table once, then on copies of it (CREATE DATABASE … TEMPLATE):
// runs rewrapSlice over 2 slices, recording each compare-and-swap it sends (statement and parameters) and the CPU of
// its reading and its writing backends a row; then replays those statements, one connection, each its own
// transaction, with no read and no crypto, and each variant below on a fresh copy, alternating `rounds` times:
// `cas` (as sent), `casonce` (the counts of the written rows taken in one pass), `casfast` (and no per-row test of the
// relabelled ids when there are none), `casbare` (the join's UPDATE alone: no RETURNING, no progress), `casprep` (as a
// prepared statement), `casmerge` (hash and nested-loop joins off), `floorbatch` (the floor's UPDATE over each batch's
// id range), `floornotrigger` (the same, the trigger off for the session), `floor` (the bench's all-core floor, 2
// statements). Prints the backend's CPU a row (and its system share). --explain sums EXPLAIN (ANALYZE, BUFFERS, WAL)
// per row instead; PLAN=1 writes the 11th statement's plan to /tmp/plan-<variant>.txt; PERF=1 records the backend with
// `perf record -g` into /tmp/perf-<variant>.data. BATCH=<n>: the batch size (2,000).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { Client, type PoolClient } from 'pg';
import { createDatabase } from '../src/dev/databases';
import { engineFor } from '../src/dev/engine';
import { seedTenants } from '../src/dev/tenants';
import { readToolchain } from '../src/dev/toolchain';
import { EnvKeyProvider } from '../src/keyring/drivers/env';
import { rewrapSlice } from '../src/rewrap/rewrap-slice';
import { KekRegistry } from '../src/store/kek-registry';
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { REKEY_PRESET } from '../src/targets/presets';
import { cloneDatabase, databaseFloor, CpuMeter, DatabaseCpu, processCpuSeconds, settle } from './harness';
import type { ScratchDatabase } from '../src/dev/databases';

interface Captured {
  sql: string;
  params: unknown[];
}

const captured: Captured[] = [];
let capturing = false;
// eslint-disable-next-line @typescript-eslint/unbound-method
const original = Client.prototype.query;
(Client.prototype as unknown as { query: unknown }).query = function (this: Client, ...args: unknown[]) {
  if (capturing && typeof args[0] === 'string' && args[0].startsWith('WITH guard AS')) {
    const params = (args[1] as unknown[]).map((p) => (Buffer.isBuffer(p) ? Buffer.from(p) : p));
    captured.push({ sql: args[0], params });
  }
  return (original as (...a: unknown[]) => unknown).apply(this, args);
};

function sysSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[12]) / 100;
}

async function backendCpu(db: ScratchDatabase): Promise<Map<number, { cpu: number; query: string }>> {
  const name = new URL(db.url).pathname.slice(1);
  const admin = new Client({ connectionString: readToolchain().databaseUrl });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ pid: number; query: string }>(
      `SELECT pid, query FROM pg_stat_activity WHERE datname = $1`,
      [name],
    );
    return new Map(rows.map((r) => [r.pid, { cpu: processCpuSeconds(r.pid), query: r.query }]));
  } finally {
    await admin.end();
  }
}

async function tableStats(client: PoolClient): Promise<Record<string, number>> {
  await client.query('SELECT pg_stat_force_next_flush()');
  const { rows } = await client.query<Record<string, string>>(
    `SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup, pg_relation_size('rekey.tenant_deks') AS heap,
            pg_relation_size('rekey.tenant_deks_pkey') AS pkey, pg_relation_size('rekey.tenant_deks_by_kek') AS bykek
     FROM pg_stat_user_tables WHERE relid = 'rekey.tenant_deks'::regclass`,
  );
  return Object.fromEntries(Object.entries(rows[0]!).map(([k, v]) => [k, Number(v)]));
}

async function promoted(db: ScratchDatabase, fingerprint: string): Promise<void> {
  const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
  await registry.register('v2', fingerprint);
  await registry.promote('v1', 'v2');
  await settle(db.pool);
}

type Variant = (c: Captured) => Captured;

const VARIANTS: Record<string, Variant> = {
  cas: (c) => c,
  casprep: (c) => c,
  casmerge: (c) => c,
  // The same rows, by the floor's statement over the batch's id range.
  floorbatch: (c) => ({
    sql: `UPDATE rekey.tenant_deks SET kek_id = $1, wrapped_dek = wrapped_dek, version = version + 1
          WHERE tenant_id >= $2 AND tenant_id <= $3`,
    params: ['v2', c.params[6], c.params[7]],
  }),
  // The same statement with the counts of `updated` taken in one pass.
  casonce: (c) => ({
    sql: c.sql
      .replace(
        /\), progress AS \(/,
        `), counts AS (SELECT count(*) AS written, count(*) FILTER (WHERE relabel) AS relabelled FROM updated), progress AS (`,
      )
      .replace(
        /\(SELECT count\(\*\) FILTER \(WHERE NOT relabel\) FROM updated\)/,
        '(SELECT written - relabelled FROM counts)',
      )
      .replace(/\(SELECT count\(\*\) FILTER \(WHERE relabel\) FROM updated\)/g, '(SELECT relabelled FROM counts)')
      .replace(/\(SELECT count\(\*\) FROM updated\)/g, '(SELECT written FROM counts)'),
    params: c.params,
  }),
  // casonce, and no per-row test of the relabelled ids when there are none.
  casfast: (c) => {
    const once = VARIANTS.casonce!(c);
    const none = (c.params[5] as Buffer).readInt32BE(0) === 0;
    return {
      sql: none
        ? once.sql.replace('u.id = ANY($6::text[]) AS relabel', 'false AS relabel') + ` WHERE $6::text[] IS NOT NULL`
        : once.sql,
      params: c.params,
    };
  },
  // Only the join's UPDATE: no RETURNING, no progress, no counts.
  casbare: (c) => ({
    sql:
      c.sql
        .replace(/RETURNING[\s\S]*$/, '')
        .replace(/^WITH guard AS \(([\s\S]*?)\), updated AS \(/, 'WITH guard AS ($1)') +
      ` AND $6::text[] IS NOT NULL AND coalesce($11::text, $12::text, $13::text, $14::text, $15::text, '') IS NOT NULL`,
    params: c.params,
  }),
  // The floor's statement, the trigger disabled for the session (replica role): what the trigger costs.
  floornotrigger: (c) => ({
    sql: `UPDATE rekey.tenant_deks SET kek_id = $1, wrapped_dek = wrapped_dek, version = version + 1
          WHERE tenant_id >= $2 AND tenant_id <= $3`,
    params: ['v2', c.params[6], c.params[7]],
  }),
};

async function replay(
  template: ScratchDatabase,
  name: string,
  variant: string,
  fingerprint: string,
  keys: string[],
  explain: boolean,
): Promise<void> {
  const [db] = await cloneDatabase(template, [name], 2);
  try {
    await promoted(db!, fingerprint);
    const client = await db!.pool.connect();
    try {
      for (const key of keys)
        await client.query(`INSERT INTO rekey.rewrap_progress (progress_key, target) VALUES ($1, 'rekey')`, [key]);
      await client.query('CHECKPOINT');
      if (variant === 'casmerge') await client.query('SET enable_hashjoin = off; SET enable_nestloop = off');
      if (variant.endsWith('notrigger')) await client.query(`SET session_replication_role = replica`);
      const pid = (client as unknown as { processID: number }).processID;
      const statements = captured.map((c) => VARIANTS[variant]!(c));
      if (process.env.PLAN) {
        const v = statements[10]!;
        await client.query('BEGIN');
        const { rows } = await client.query<{ 'QUERY PLAN': string }>(
          `EXPLAIN (ANALYZE, BUFFERS, VERBOSE) ${v.sql}`,
          v.params,
        );
        await client.query('ROLLBACK');
        fs.writeFileSync(`/tmp/plan-${variant}.txt`, rows.map((r) => r['QUERY PLAN']).join('\n'));
      }
      const before = await tableStats(client);
      const perf = process.env.PERF
        ? spawn('perf', ['record', '-F', '1999', '-g', '-p', String(pid), '-o', `/tmp/perf-${variant}.data`], {
            stdio: 'ignore',
          })
        : undefined;
      if (perf) await new Promise((r) => setTimeout(r, 1000));
      const cpu0 = processCpuSeconds(pid);
      const sys0 = sysSeconds(pid);
      const t = Date.now();
      const sums: Record<string, number> = {};
      for (const v of statements) {
        if (explain) {
          const { rows } = await client.query<{
            'QUERY PLAN': [
              {
                Plan: Record<string, number>;
                Triggers?: { Time?: number }[];
                'Planning Time': number;
                'Execution Time': number;
              },
            ];
          }>(`EXPLAIN (ANALYZE, BUFFERS, WAL, TIMING OFF, FORMAT JSON) ${v.sql}`, v.params);
          const top = rows[0]!['QUERY PLAN'][0];
          const plan = top.Plan;
          sums['planning ms'] = (sums['planning ms'] ?? 0) + top['Planning Time'];
          sums['execution ms'] = (sums['execution ms'] ?? 0) + top['Execution Time'];
          for (const k of [
            'Shared Hit Blocks',
            'Shared Read Blocks',
            'Shared Dirtied Blocks',
            'WAL Records',
            'WAL FPI',
            'WAL Bytes',
            'Local Hit Blocks',
            'Temp Written Blocks',
          ])
            sums[k] = (sums[k] ?? 0) + Number(plan[k] ?? 0);
        } else if (variant === 'casprep') {
          await client.query({ name: 'cas', text: v.sql, values: v.params });
        } else {
          await client.query(v.sql, v.params);
        }
      }
      const cpu = processCpuSeconds(pid) - cpu0;
      const sys = sysSeconds(pid) - sys0;
      if (perf) {
        perf.kill('SIGINT');
        await new Promise((r) => perf.on('exit', r));
      }
      const wall = (Date.now() - t) / 1000;
      const after = await tableStats(client);
      const rows = after.n_tup_upd! - before.n_tup_upd!;
      console.log(
        `${variant}${explain ? ' (explain)' : ''}: ${captured.length} statements, ${rows} rows, backend CPU ${((cpu * 1e6) / rows).toFixed(2)} µs a row (sys ${((sys * 1e6) / rows).toFixed(2)}), wall ${wall.toFixed(2)} s, hot ${after.n_tup_hot_upd! - before.n_tup_hot_upd!}` +
          (explain
            ? ` per row: ${Object.entries(sums)
                .map(([k, v]) => `${k} ${(v / rows).toFixed(3)}`)
                .join(', ')}`
            : ''),
      );
    } finally {
      client.release();
    }
  } finally {
    await db!.drop();
  }
}

async function main(): Promise<void> {
  const count = Number(process.argv[2] ?? 200_000);
  const variants = (process.argv[3] ?? 'cas,floorbatch').split(',');
  const rounds = Number(process.argv[4] ?? 1);
  const explain = process.argv.includes('--explain');
  const name = `rekey_pgside_${Date.now()}`;
  const template = await createDatabase(readToolchain().databaseUrl, name, 4);
  const keys = new EnvKeyProvider(
    { B_KEK_v1: randomBytes(32).toString('base64url'), B_KEK_v2: randomBytes(32).toString('base64url') },
    'B',
  );
  const fp = async (id: string) => (await keys.list()).find((k) => k.kekId === id)!.fingerprint;
  try {
    await new KekRegistry(template.pool, BUILTIN_TARGET).seedActive('v1', await fp('v1'));
    await seedTenants({ db: template.pool, keys, kekId: 'v1', count });
    await settle(template.pool);
    // The engine on a copy: capture its compare-and-swaps, CPU by backend.
    const [engineDb] = await cloneDatabase(template, [`${name}_engine`], 10);
    const progressKeys: string[] = [];
    try {
      const engine = await engineFor(engineDb!.pool, REKEY_PRESET, keys, 'v1', 'v2');
      await settle(engineDb!.pool);
      const boundaries = await engine.store.boundaries('v1', [0.5]);
      const bounds: (string | null)[] = ['', ...boundaries, null];
      const run = `pgside-${Date.now()}`;
      const before = await backendCpu(engineDb!);
      const client = await engineDb!.pool.connect();
      const stats0 = await tableStats(client);
      client.release();
      capturing = true;
      const t = Date.now();
      await Promise.all(
        [0, 1].map((i) => {
          const progressKey = `${run}/slice-${i}`;
          progressKeys.push(progressKey);
          return rewrapSlice(engine, {
            after: bounds[i] ?? '',
            until: bounds[i + 1] ?? null,
            batchSize: Number(process.env.BATCH ?? 2000),
            dryRun: false,
            progressKey,
          });
        }),
      );
      capturing = false;
      fs.writeFileSync('/tmp/pgside-cas.sql', captured[0]!.sql);
      for (const v of ['casonce', 'casbare']) fs.writeFileSync(`/tmp/pgside-${v}.sql`, VARIANTS[v]!(captured[0]!).sql);
      fs.writeFileSync(
        '/tmp/pgside-cas.json',
        JSON.stringify(captured[0]!.params.map((p) => (Buffer.isBuffer(p) ? `<${p.length} bytes>` : p))),
      );
      const wall = (Date.now() - t) / 1000;
      const after = await backendCpu(engineDb!);
      const c2 = await engineDb!.pool.connect();
      const stats1 = await tableStats(c2);
      c2.release();
      const byKind: Record<string, number> = {};
      for (const [pid, { cpu, query }] of after) {
        const kind = query.startsWith('COPY')
          ? 'reader'
          : query.startsWith('WITH guard') || query.includes('rewrap_progress')
            ? 'writer'
            : 'other';
        byKind[kind] = (byKind[kind] ?? 0) + cpu - (before.get(pid)?.cpu ?? 0);
      }
      console.log(
        `engine: ${count} rows in ${wall.toFixed(2)} s; backend CPU a row: ${Object.entries(byKind)
          .map(([k, v]) => `${k} ${((v * 1e6) / count).toFixed(2)} µs`)
          .join(
            ', ',
          )}; upd ${stats1.n_tup_upd! - stats0.n_tup_upd!} hot ${stats1.n_tup_hot_upd! - stats0.n_tup_hot_upd!}; ${captured.length} CAS`,
      );
    } finally {
      await engineDb!.drop();
    }
    await template.pool.end();
    for (let round = 0; round < rounds; round++) {
      for (const variant of variants) {
        if (variant === 'floor') {
          const [db] = await cloneDatabase(template, [`${name}_floor`], 4);
          try {
            await promoted(db!, await fp('v2'));
            const cpu = new DatabaseCpu([`${name}_floor`], false);
            const m = await databaseFloor(db!.pool, 'v2', 2, new CpuMeter({ postgres: () => cpu.read() }));
            cpu.close();
            console.log(
              `floor (2 statements): ${m.seconds.toFixed(2)} s, PostgreSQL ${((m.cpu.postgres! * 1e6) / count).toFixed(2)} µs a row`,
            );
          } finally {
            await db!.drop();
          }
          continue;
        }
        await replay(template, `${name}_r`, variant, await fp('v2'), progressKeys, explain);
      }
    }
  } finally {
    keys.close();
    const admin = new Client({ connectionString: readToolchain().databaseUrl });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
  process.exit(0);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
