// `npm run bench:crypto`: the CPU cost of one rewrap (unwrap with one KEK, wrap with another) on this machine.
import { randomBytes } from 'node:crypto';
import { NONCE_BYTES, unwrapDek, wrapDek, wrapDekInto, WRAPPED_DEK_BYTES } from '../src/envelope/dek-wrapping';

const n = Number(process.argv[2] ?? 200_000);
const from = randomBytes(32);
const to = randomBytes(32);
const ids = Array.from({ length: n }, (_, i) => `tenant-${String(i).padStart(8, '0')}`);
const wrapped = ids.map((id) => wrapDek(from, 'v1', id, randomBytes(32)));
const out = Buffer.allocUnsafe(WRAPPED_DEK_BYTES * n);
const nonces = randomBytes(NONCE_BYTES * n);
const started = process.hrtime.bigint();
for (let i = 0; i < n; i++) {
  const dek = unwrapDek(from, 'v1', ids[i]!, wrapped[i]!);
  wrapDekInto(
    out,
    i * WRAPPED_DEK_BYTES,
    to,
    'v2',
    ids[i]!,
    dek,
    nonces.subarray(i * NONCE_BYTES, (i + 1) * NONCE_BYTES),
  );
  dek.fill(0);
}
const micros = Number(process.hrtime.bigint() - started) / 1e3 / n;
console.log(
  `unwrap + wrap of one DEK: ${micros.toFixed(2)} µs on one core (${n.toLocaleString('en-US')} DEKs); 1,000,000 DEKs = ${micros.toFixed(1)} s`,
);
