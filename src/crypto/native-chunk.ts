// A chunk of a rewrap in one native call (native/aes-gcm `rewrap_chunk`), for the two in-place formats that carry
// most rows: rekey's own (bytea `0x01 ‖ nonce ‖ ciphertext ‖ tag`) and Mycelium's (`v2:` and standard base64). The
// addon opens every value of the packed column under `from` and seals it under `to` into the packed output column,
// building each row's associated data from the packed text columns as the codec does, with nonces this thread draws
// for the whole chunk. Per row in JavaScript that was half a dozen views, the associated data twice, and two calls
// across N-API; here it is one call per chunk. A row the addon does not take (another form, text Node's encoder would
// not write, an id it cannot read as the codec would, a value that does not open under `from`) goes through rewrapOne
// with the same nonce, and so gets exactly the outcome, the reason and the bytes the codec gives.
import { randomFillSync } from 'node:crypto';
import { NONCE_BYTES, type Codec } from '../codec/sealed-format';
import { rewrapOneAt, type RewrapRowsOptions, type RewrapRowsResult, type ScheduledKek } from '../rewrap/rewrap-rows';
import { nativeChunkCall } from './aes-gcm';
import { unpackColumn, type ByteColumn, type Column, type Columns } from './columns';

/** The addon's outcome of a row (native/aes-gcm ROW_*). */
export const ROW_WRITTEN = 0;
export const ROW_NOT_OPENED = 1;
export const ROW_NOT_FORM = 2;

/** What rewrapColumns gives (RewrapChunkResult), declared here so that this module needs nothing from it. */
export interface NativeChunkResult {
  indexes: Int32Array;
  relabel: Uint8Array;
  values: Column[];
  failures: RewrapRowsResult['failures'];
}

/** How the addon reads the format: encoding, fixed plaintext length and prefix; and the recipe's program. */
export interface Program {
  form: Uint8Array;
  recipe: Uint8Array;
  /** The packed text columns the recipe reads, in the order it names them. */
  columns: string[];
}

const programs = new WeakMap<Codec, Program | null>();

/** The format as the addon reads it, or null where it reads only through the codec. */
export function programFor(codec: Codec): Program | null {
  let program = programs.get(codec);
  if (program !== undefined) return program;
  program = compileProgram(codec);
  programs.set(codec, program);
  return program;
}

function compileProgram(codec: Codec): Program | null {
  const form = codec.inPlace;
  const { value, aad } = codec.format;
  if (!form || value.kind !== 'combined' || aad.store || aad.read.length !== 1) return null;
  if (form.encoding !== 'bytea' && form.encoding !== 'base64') return null;
  if (form.prefix.length > 255) return null;
  const header = Buffer.alloc(6 + form.prefix.length);
  header[0] = form.encoding === 'bytea' ? 0 : 1;
  header.writeUInt32LE(form.plaintextBytes ?? 0, 1);
  header[5] = form.prefix.length;
  form.prefix.copy(header, 6);
  const columns: string[] = [];
  const recipe: Buffer[] = [];
  for (const part of aad.read[0]!) {
    if ('text' in part || 'hex' in part) {
      const bytes = 'text' in part ? Buffer.from(part.text, 'utf8') : Buffer.from(part.hex, 'hex');
      const head = Buffer.alloc(5);
      head[0] = 1;
      head.writeUInt32LE(bytes.length, 1);
      recipe.push(head, bytes);
    } else if ('column' in part) {
      let index = columns.indexOf(part.column);
      if (index < 0) index = columns.push(part.column) - 1;
      if (index > 255) return null;
      recipe.push(Buffer.from([2, index, (part.as === 'uuid' ? 1 : 0) | (part.lengthPrefix ? 2 : 0)]));
    } else {
      recipe.push(Buffer.from([3, part.lengthPrefix ? 2 : 0]));
    }
  }
  return { form: header, recipe: Buffer.concat(recipe), columns };
}

/**
 * The chunk rewrapped by the addon's one call, or undefined where it does not apply (not one of its formats, a scan
 * of the others, a dry run, Node's AES-GCM, an addon built before it, a column not packed as it reads them): the
 * caller then does as before. `nonces` (12 bytes a row) are drawn here unless given.
 */
export function rewrapChunkNative(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  rows: Columns,
  options: RewrapRowsOptions,
  nonces?: Buffer,
): { result: NativeChunkResult; nativeRows: number } | undefined {
  if (options.others || options.dryRun) return undefined;
  const program = programFor(codec);
  if (!program) return undefined;
  const form = codec.inPlace!;
  const value = rows.columns[form.column];
  if (value?.kind !== (form.encoding === 'bytea' ? 'bytes' : 'text')) return undefined;
  const aad: ByteColumn[] = [];
  for (const name of program.columns) {
    const column = rows.columns[name];
    if (column?.kind !== 'text') return undefined;
    aad.push(column.column);
  }
  const call = nativeChunkCall(from.key, to.key);
  if (!call) return undefined;

  const { count } = rows;
  const input = value.column;
  const chunkNonces = nonces ?? randomFillSync(Buffer.alloc(NONCE_BYTES * count));
  // Every value the addon writes is as long as the one it replaces. Zeroed, not allocUnsafe: the buffer goes to
  // another thread whole, and an unused tail must not carry whatever memory held before.
  const out = new Uint8Array(input.bytes.length);
  const outLengths = new Int32Array(count);
  const indexes = new Int32Array(count);
  const outcomes = new Uint8Array(count);
  const written = call(
    program.form,
    program.recipe,
    Buffer.from(from.kekId, 'utf8'),
    Buffer.from(to.kekId, 'utf8'),
    input.lengths,
    input.bytes,
    aad.map((c) => c.lengths),
    aad.map((c) => c.bytes),
    chunkNonces,
    out,
    outLengths,
    indexes,
    outcomes,
  );
  const kind = form.encoding === 'bytea' ? ('bytes' as const) : ('text' as const);
  if (written === count) {
    return {
      result: {
        indexes,
        relabel: new Uint8Array(count),
        values: [{ kind, column: { lengths: outLengths, bytes: out.subarray(0, sum(outLengths, count)) } }],
        failures: [],
      },
      nativeRows: written,
    };
  }
  return {
    result: merge(codec, from, to, rows, options, chunkNonces, { out, outLengths, outcomes, written, kind }),
    nativeRows: written,
  };
}

function sum(lengths: Int32Array, n: number): number {
  let total = 0;
  for (let k = 0; k < n; k++) total += lengths[k]!;
  return total;
}

/** The addon's rows and, in their places, every other row as rewrapOne takes it, with the nonce it had. */
function merge(
  codec: Codec,
  from: ScheduledKek,
  to: ScheduledKek,
  { count, columns }: Columns,
  options: RewrapRowsOptions,
  nonces: Buffer,
  native: { out: Uint8Array; outLengths: Int32Array; outcomes: Uint8Array; written: number; kind: 'bytes' | 'text' },
): NativeChunkResult {
  const { out, outLengths, outcomes, kind } = native;
  const unpacked = Object.entries(columns).map(([name, column]) => [name, unpackColumn(column)] as const);
  const parts: Uint8Array[] = [];
  const indexes: number[] = [];
  const relabel: number[] = [];
  const lengths: number[] = [];
  const failures: NativeChunkResult['failures'] = [];
  let k = 0; // the addon's next value
  let at = 0; // where it starts in `out`
  for (let i = 0; i < count; i++) {
    if (outcomes[i] === ROW_WRITTEN) {
      const length = outLengths[k]!;
      parts.push(out.subarray(at, at + length));
      indexes.push(i);
      relabel.push(0);
      lengths.push(length);
      at += length;
      k++;
      continue;
    }
    const outcome = rewrapOneAt(codec, from, to, unpacked, i, options, nonces);
    if (outcome === undefined) continue;
    if ('reason' in outcome) {
      failures.push({ index: i, reason: outcome.reason });
      continue;
    }
    const written = outcome.values[0]!;
    const bytes = typeof written === 'string' ? Buffer.from(written, 'utf8') : written;
    parts.push(bytes);
    indexes.push(i);
    relabel.push(outcome.relabel ? 1 : 0);
    lengths.push(bytes.length);
  }
  // A buffer of its own (Buffer.concat may hand out a slice of Node's shared pool, which must not leave the thread).
  const packed = new Uint8Array(lengths.reduce((a, b) => a + b, 0));
  let offset = 0;
  for (const part of parts) {
    packed.set(part, offset);
    offset += part.length;
  }
  return {
    indexes: Int32Array.from(indexes),
    relabel: Uint8Array.from(relabel),
    values: [{ kind, column: { lengths: Int32Array.from(lengths), bytes: packed } }],
    failures,
  };
}
