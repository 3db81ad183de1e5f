// `npm run bench:crypto`: the CPU cost of one rewrap (unwrap with one KEK, wrap with another) on one core, as the
// rewrap engine does it (rewrapRows over batches of 2,000 rows of rekey's own format), with Node's AES-GCM and with
// the native addon, in the same run.
import { randomBytes } from 'node:crypto';
import { REKEY_DEK_FORMAT } from '../src/codec/formats';
import { compileFormat } from '../src/codec/sealed-format';
import { loadAesGcmBackend } from '../src/crypto/aes-gcm';
import { rewrapRows } from '../src/rewrap/rewrap-rows';
import { inMemoryBatches, provenance } from './harness';

const n = Number(process.argv[2] ?? 200_000);
const from = { kekId: 'v1', key: randomBytes(32) };
const to = { kekId: 'v2', key: randomBytes(32) };
const codec = compileFormat(REKEY_DEK_FORMAT);
const batches = inMemoryBatches(n, from);

function measure(): number {
  const started = process.hrtime.bigint();
  for (const rows of batches) rewrapRows(codec, from, to, rows, { others: false, dryRun: false });
  return Number(process.hrtime.bigint() - started) / 1e3 / n;
}

// rewrapRows picks its AES-GCM once per process (REKEY_AES_GCM): the npm script runs this once with each.
const backend = loadAesGcmBackend();
const micros = measure();
console.log(
  `unwrap + wrap of one DEK, ${backend.name} AES-GCM: ${micros.toFixed(2)} µs on one core (${n.toLocaleString('en-US')} DEKs); 1,000,000 DEKs = ${micros.toFixed(1)} s`,
);
console.log(provenance('npm run bench:crypto'));
