// `npm run bench:columns -- [rounds]`: the crypto threads' work alone, in this process's one thread, on in-memory
// chunks as the engine hands them over: a rotation's chunk (rewrapColumns, 2,000 rows) of rekey's own format and of
// Mycelium's, and a migration's chunk (migrateChunk, 500 rows of Mycelium's two Telegram fields). It prints the CPU
// this process spent per row (per field for the migration), garbage collection included: what a change to the column
// path costs or saves, without PostgreSQL, Temporal or the machine's other load in the figure. The fixtures are
// written with node:crypto alone (bench/mycelium.ts, src/envelope's wrapDek for rekey's own format).
import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import {
  MYCELIUM_DEK_FORMAT,
  MYCELIUM_V1_FIELD_FORMAT,
  myceliumV2FieldFormat,
  REKEY_DEK_FORMAT,
} from '../src/codec/formats';
import { compileFormat } from '../src/codec/sealed-format';
import { aesGcmBackend, releaseKey, scheduleKey } from '../src/crypto/aes-gcm';
import { rewrapColumns } from '../src/crypto/column-rewrap';
import type { ByteColumn, Column, Columns } from '../src/crypto/columns';
import { wrapDek } from '../src/envelope/dek-wrapping';
import { migrateChunk } from '../src/rewrap/migrate-chunk';
import { gitCommit } from './harness';
import { myceliumKek, seal, uuidBytes } from './mycelium';

function textColumn(values: string[]): ByteColumn {
  return {
    lengths: Int32Array.from(values, (v) => Buffer.byteLength(v)),
    bytes: new Uint8Array(Buffer.from(values.join(''), 'utf8')),
  };
}

const text = (values: string[]): Column => ({ kind: 'text', column: textColumn(values) });

/** CPU µs of this process per unit of `work()`'s result, after a warm-up. */
function cpuPer(work: () => number, repeats: number): number {
  for (let i = 0; i < Math.ceil(repeats / 5); i++) work();
  const before = process.cpuUsage();
  let units = 0;
  for (let i = 0; i < repeats; i++) units += work();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / units;
}

function rotationChunk(format: 'rekey' | 'mycelium'): () => number {
  const rows = 2_000;
  const from = randomBytes(32);
  const to = randomBytes(32);
  let make: () => Columns;
  if (format === 'mycelium') {
    const ids = Array.from({ length: rows }, () => randomUUID());
    const values = ids.map((id) => `v2:${seal(from, randomBytes(32), uuidBytes(id))}`);
    make = () => ({ count: rows, columns: { encrypted_dek: text(values), id: text(ids) } });
  } else {
    const ids = Array.from({ length: rows }, (_, i) => `tenant-${String(i).padStart(8, '0')}`);
    const values = ids.map((id) => wrapDek(from, 'v1', id, randomBytes(32)));
    const lengths = Int32Array.from(values, (v) => v.length);
    make = () => ({
      count: rows,
      columns: {
        wrapped_dek: { kind: 'bytes', column: { lengths, bytes: new Uint8Array(Buffer.concat(values)) } },
        tenant_id: text(ids),
      },
    });
  }
  const codec = compileFormat(format === 'mycelium' ? MYCELIUM_DEK_FORMAT : REKEY_DEK_FORMAT);
  const [fromId, toId] = format === 'mycelium' ? ['1', '2'] : ['v1', 'v2'];
  return () => {
    const fromKey = scheduleKey(from);
    const toKey = scheduleKey(to);
    try {
      const result = rewrapColumns(codec, { kekId: fromId, key: fromKey }, { kekId: toId, key: toKey }, make(), {
        others: false,
        dryRun: false,
      });
      if (result.failures.length > 0) throw new Error(`a row failed: ${result.failures[0]!.reason}`);
      return result.indexes.length;
    } finally {
      releaseKey(fromKey);
      releaseKey(toKey);
    }
  };
}

function migrationChunk(): () => number {
  const rows = 500;
  const fields = ['telegram_bot_token', 'telegram_webhook_secret'];
  const kek = myceliumKek(randomUUID());
  const tenants = Array.from({ length: rows }, () => randomUUID());
  const wrapped = tenants.map((t) => `v2:${seal(kek, randomBytes(32), uuidBytes(t))}`);
  const values = fields.map(() =>
    tenants.map(() => seal(kek, Buffer.from(`123456:${randomBytes(24).toString('base64')}`))),
  );
  const codecs = {
    dek: compileFormat(MYCELIUM_DEK_FORMAT),
    legacy: fields.map(() => compileFormat(MYCELIUM_V1_FIELD_FORMAT)),
    current: fields.map((f) => compileFormat(myceliumV2FieldFormat(f))),
  };
  return () => {
    const result = migrateChunk(codecs, {
      keks: [{ kekId: '1', key: Buffer.from(kek) }],
      rows: {
        count: rows,
        tenants: textColumn(tenants),
        values: values.map(textColumn),
        dek: {
          ids: textColumn(tenants),
          labels: textColumn(tenants.map(() => '1')),
          columns: { count: rows, columns: { encrypted_dek: text(wrapped), id: text(tenants) } },
        },
      },
      deks: {},
      dryRun: false,
    });
    if (result.failures.length > 0) throw new Error(`a value failed: ${result.failures[0]!.reason}`);
    return result.indexes.length * fields.length;
  };
}

function main(): void {
  const rounds = Number(process.argv[2] ?? 3);
  const cases: [string, () => () => number, number][] = [
    ["rewrapColumns, rekey's own format, µs a row", () => rotationChunk('rekey'), 100],
    ["rewrapColumns, Mycelium's format, µs a row", () => rotationChunk('mycelium'), 100],
    ["migrateChunk, Mycelium's Telegram fields, µs a field", migrationChunk, 400],
  ];
  const figures = cases.map(([name, make, repeats]) => {
    const work = make();
    return { name, values: Array.from({ length: rounds }, () => cpuPer(work, repeats)) };
  });
  console.log('| case | CPU per unit, each round |');
  console.log('|---|---|');
  for (const { name, values } of figures) console.log(`| ${name} | ${values.map((v) => v.toFixed(2)).join(', ')} |`);
  console.log(
    `\nCommand: \`npm run bench:columns -- ${rounds}\`; ${new Date().toISOString().slice(0, 10)}, commit ${gitCommit()}, ` +
      `${os.availableParallelism()} cores, load ${os.loadavg()[0]!.toFixed(1)}; AES-GCM ${aesGcmBackend().name}, one thread.`,
  );
}

main();
