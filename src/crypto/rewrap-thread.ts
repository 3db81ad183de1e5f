// The entry of a crypto thread (src/crypto/row-crypto.ts): one chunk of a rewrap batch per task. It holds no key
// between tasks: each task brings copies of its two KEKs, moved here (not copied) and zeroized when the chunk is done.
// Rows come and go by column (src/crypto/columns.ts).
import { compileFormat, type Codec, type ColumnValue, type SealedFormat } from '../codec/sealed-format';
import { rewrapRows, type RewrapRowsOptions, type RewrapRowsResult } from '../rewrap/rewrap-rows';
import { packColumn, unpackColumn, unpackRows, type Column, type Columns } from './columns';
import { migrateChunkTask, type MigrateChunkResult, type MigrateChunkTask } from '../rewrap/migrate-chunk';

export interface RewrapChunk {
  format: SealedFormat;
  from: { kekId: string; key: ArrayBuffer };
  to: { kekId: string; key: ArrayBuffer };
  rows: Columns;
  options: RewrapRowsOptions;
}

/** A chunk's result by column: the written rows' indexes, relabel flags and each write column's new values. */
export interface RewrapChunkResult {
  indexes: Int32Array;
  relabel: Uint8Array;
  values: Column[];
  failures: RewrapRowsResult['failures'];
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

export function rewrapChunk(task: RewrapChunk): RewrapChunkResult {
  // Views over the moved buffers: no further copy of the key bytes.
  const from = Buffer.from(task.from.key);
  const to = Buffer.from(task.to.key);
  try {
    const codec = codecFor(task.format);
    const result = rewrapRows(
      codec,
      { kekId: task.from.kekId, key: from },
      { kekId: task.to.kekId, key: to },
      unpackRows(task.rows),
      task.options,
    );
    const width = task.options.dryRun ? 0 : codec.writeColumns.length;
    return {
      indexes: Int32Array.from(result.writes, (w) => w.index),
      relabel: Uint8Array.from(result.writes, (w) => (w.relabel ? 1 : 0)),
      values: Array.from({ length: width }, (_, c) => packColumn(result.writes.map((w) => w.values[c]))),
      failures: result.failures,
    };
  } finally {
    from.fill(0);
    to.fill(0);
  }
}

/**
 * The chunk's result as rewrapRows gives it for the whole batch: indexes shifted by where the chunk starts in it, the
 * values as views of the buffers that came back.
 */
export function chunkResult(chunk: RewrapChunkResult, offset: number): RewrapRowsResult {
  const values = chunk.values.map((column) => unpackColumn(column) as ColumnValue[]);
  return {
    writes: Array.from(chunk.indexes, (index, i) => ({
      index: index + offset,
      relabel: chunk.relabel[i] === 1,
      values: values.map((column) => column[i]!),
    })),
    failures: chunk.failures.map((failure) => ({ index: failure.index + offset, reason: failure.reason })),
  };
}

/** The migration's task (`rekey migrate-dek`, src/rewrap/migrate-chunk.ts) on the same threads. */
export function migrateChunk(task: MigrateChunkTask): MigrateChunkResult {
  return migrateChunkTask(task, codecFor);
}
