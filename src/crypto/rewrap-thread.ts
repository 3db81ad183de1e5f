// The entry of a crypto thread (src/crypto/row-crypto.ts): one chunk of a rewrap batch per task. It holds no key
// between tasks: each task brings copies of its two KEKs, moved here (not copied) and zeroized when the chunk is done.
import { compileFormat, type Codec, type Row, type SealedFormat } from '../codec/sealed-format';
import { rewrapRows, type RewrapRowsOptions, type RewrapRowsResult } from '../rewrap/rewrap-rows';

export interface RewrapChunk {
  format: SealedFormat;
  from: { kekId: string; key: ArrayBuffer };
  to: { kekId: string; key: ArrayBuffer };
  rows: Row[];
  options: RewrapRowsOptions;
}

const codecs = new Map<string, Codec>();

function codecFor(format: SealedFormat): Codec {
  const key = JSON.stringify(format);
  let codec = codecs.get(key);
  if (!codec) {
    codec = compileFormat(format);
    codecs.set(key, codec);
  }
  return codec;
}

/** A Buffer sent to a thread arrives as a plain Uint8Array: the codec reads bytea columns as Buffers. */
export function withBuffers(row: Row): Row {
  let copy: Record<string, unknown> | undefined;
  for (const [column, value] of Object.entries(row)) {
    if (value instanceof Uint8Array && !Buffer.isBuffer(value)) {
      copy ??= { ...row };
      copy[column] = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    }
  }
  return copy ?? row;
}

export function rewrapChunk(task: RewrapChunk): RewrapRowsResult {
  // Views over the moved buffers: no further copy of the key bytes.
  const from = Buffer.from(task.from.key);
  const to = Buffer.from(task.to.key);
  try {
    return rewrapRows(
      codecFor(task.format),
      { kekId: task.from.kekId, key: from },
      { kekId: task.to.kekId, key: to },
      task.rows.map(withBuffers),
      task.options,
    );
  } finally {
    from.fill(0);
    to.fill(0);
  }
}
