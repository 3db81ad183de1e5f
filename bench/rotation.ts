// `npm run bench -- [tenants]`: the real rotation workflow through the dev server and a worker process, against
// a naive one-off script on the same data. Writes bench/results/rotation-<tenants>.md.
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { startRotation } from '../src/client/rotations';
import { seedTenants } from '../src/dev/tenants';
import { readToolchain } from '../src/dev/toolchain';
import type { KeyProvider } from '../src/keys/key-provider';
import { projectRoot } from '../src/project-paths';
import { KekRegistry } from '../src/store/kek-registry';
import { envKeys, freshDatabase, gitCommit, spawnWorker, startServer, TASK_QUEUE, temporalClient } from './harness';

const NAIVE_SAMPLE = Number(process.env.NAIVE_SAMPLE ?? 50_000);

/** What a user would write instead: a batch at a time, one tenant at a time, one UPDATE (and commit) per row. */
async function naiveRotation(db: Pool, keys: KeyProvider, from: string, to: string, limit: number): Promise<number> {
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
      const dek = keys.unwrap(from, row.tenant_id, row.wrapped_dek);
      const wrapped = keys.wrap(to, row.tenant_id, dek);
      dek.fill(0);
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

async function main(): Promise<void> {
  const tenants = Number(process.argv[2] ?? 1_000_000);
  const toolchain = readToolchain();
  const server = await startServer(toolchain);
  const database = await freshDatabase('rekey_bench');
  const { env: keyEnv, provider: keys } = envKeys(['v1', 'v2', 'v3'], 'v1');
  const { client, close } = await temporalClient(server.address);
  const worker = spawnWorker({ databaseUrl: database.url, address: server.address, keyEnv });
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(`${line}\n`);
  };
  try {
    await new KekRegistry(database.pool, BUILTIN_TARGET).seedActive('v1', keys.fingerprint('v1'));
    let t = Date.now();
    await seedTenants({ db: database.pool, keys, kekId: 'v1', count: tenants });
    await database.pool.query('VACUUM ANALYZE rekey.tenant_deks');
    say(`seeded ${tenants.toLocaleString('en-US')} tenants with COPY in ${((Date.now() - t) / 1000).toFixed(1)} s`);

    const started = await startRotation(
      client,
      {
        from: 'v1',
        to: 'v2',
        gracePeriod: '1s',
        batchSize: Number(process.env.BATCH ?? 2_000),
        parallelism: Number(process.env.PARALLELISM ?? 2),
      },
      { taskQueue: TASK_QUEUE },
    );
    const report = await started.handle.result();
    const rewrap = report.phases.rewrap!;
    const rewrapSeconds = ((rewrap.endedAt ?? 0) - rewrap.startedAt) / 1000;
    let historyEvents = 0;
    let runs = 0;
    for await (const execution of client.workflow.list({ query: `WorkflowId = '${started.handle.workflowId}'` })) {
      historyEvents += execution.historyLength ?? 0;
      runs++;
    }
    const rate = report.counters.rewrapped / rewrapSeconds;
    const workerPeak = worker.peakRssMiB();

    t = Date.now();
    const naiveDone = await naiveRotation(database.pool, keys, 'v2', 'v3', Math.min(NAIVE_SAMPLE, tenants));
    const naiveSeconds = (Date.now() - t) / 1000;
    const naiveRate = naiveDone / naiveSeconds;

    const fingerprint = createHash('sha256')
      .update(
        os
          .cpus()
          .map((c) => c.model)
          .join(),
      )
      .digest('hex')
      .slice(0, 8);
    say('');
    say(`| measure | value |`);
    say(`|---|---|`);
    say(`| tenants | ${tenants.toLocaleString('en-US')} |`);
    say(`| rewrap phase (workflow, wall) | ${rewrapSeconds.toFixed(1)} s |`);
    say(`| rekey throughput | ${Math.round(rate).toLocaleString('en-US')} tenants/s |`);
    say(
      `| naive script (one UPDATE per row, ${naiveDone.toLocaleString('en-US')} tenants) | ${Math.round(naiveRate).toLocaleString('en-US')} tenants/s, ${(tenants / naiveRate).toFixed(0)} s for all ${tenants.toLocaleString('en-US')} |`,
    );
    say(`| ratio rekey / naive | ${(rate / naiveRate).toFixed(1)}x |`);
    say(`| worker peak RSS | ${workerPeak} MiB |`);
    say(`| workflow history events | ${historyEvents} in ${runs} run(s) |`);
    say(`| outcome | ${report.outcome}, ${report.passes} pass(es), CAS conflicts ${report.counters.casConflicts} |`);
    say('');
    say(
      `Command: \`npm run bench -- ${tenants}\`; ${new Date().toISOString().slice(0, 10)}, commit ${gitCommit()}, ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'} #${fingerprint}), PostgreSQL with fsync on.`,
    );
    fs.writeFileSync(path.join(projectRoot, 'bench', 'results', `rotation-${tenants}.md`), `${lines.join('\n')}\n`);
  } finally {
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
