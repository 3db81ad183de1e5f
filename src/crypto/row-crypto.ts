// Where a rewrap's crypto runs. A worker process spreads each batch over a pool of threads sized to its cores
// (REKEY_CRYPTO_THREADS), so one activity uses every core while its own thread keeps PostgreSQL busy; 0 runs the
// crypto in the activity's thread. Both run the same rewrapRows and give the same result.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Piscina } from 'piscina';
import type { Codec, Row } from '../codec/sealed-format';
import { projectRoot } from '../project-paths';
import {
  openReasons,
  rewrapRows,
  type RewrapRowsOptions,
  type RewrapRowsResult,
  type RowKek,
} from '../rewrap/rewrap-rows';
import { releaseKey, scheduleKey } from './aes-gcm';
import { rewrapColumns } from './column-rewrap';
import { concatColumns, packRows, sliceColumn, transferables, type Columns } from './columns';
import type { CallWindow } from './request-pacer';
import { chunkResult, type RewrapChunk, type RewrapChunkResult } from './rewrap-thread';
import { ConfigError } from '../errors';

export interface RowCrypto {
  /** Crypto threads (0: the caller's thread). */
  readonly threads: number;
  rewrap(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult>;
  /**
   * The same rewrap for rows packed by column (src/crypto/columns.ts: the codec's read columns, as
   * TargetStore.readColumns reads them), with the result by column: no object per row on either side. Optional: an
   * implementation without it (a remote key store's) is given rows.
   */
  rewrapColumns?(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: Columns,
    options: RewrapRowsOptions,
  ): Promise<RewrapChunkResult>;
  /**
   * A remote key store's (KMS, Transit): a slice lets the calls of up to `batches` batches run at once, in one window
   * of calls (`calls`, given to each batch's rewrap), so that a call backing off does not hold the calls of the
   * batches after it; the batches are still written one after another, in order. Absent: one batch at a time.
   */
  pipeline?(): { calls: CallWindow; batches: number };
  /** For each row, undefined if it opens under `kek`, else why not (verification: nothing is written). */
  check(codec: Codec, kek: RowKek, rows: readonly Row[]): Promise<(string | undefined)[]>;
  close(): Promise<void>;
}

/** In the caller's thread (REKEY_CRYPTO_THREADS=0). */
export const inlineRowCrypto: RowCrypto = {
  threads: 0,
  rewrap: (codec, from, to, rows, options) => Promise.resolve(rewrapRows(codec, from, to, rows, options)),
  rewrapColumns: (codec, from, to, rows, options) => {
    const fromKey = scheduleKey(from.key);
    const toKey = scheduleKey(to.key);
    try {
      return Promise.resolve(
        rewrapColumns(codec, { kekId: from.kekId, key: fromKey }, { kekId: to.kekId, key: toKey }, rows, options),
      );
    } finally {
      releaseKey(fromKey);
      releaseKey(toKey);
    }
  },
  check: (codec, kek, rows) => Promise.resolve(openReasons(codec, kek, rows)),
  close: () => Promise.resolve(),
};

/** Rows below this go to one thread: splitting a small batch costs more in messages than it saves. */
const MIN_CHUNK_ROWS = 128;

export class ThreadedRowCrypto implements RowCrypto {
  private readonly pool: Piscina;
  /** A thread failed outside any task (its script did not load): every later call fails with this at once. */
  private broken: Error | undefined;

  /** `env`: the threads' environment (REKEY_AES_GCM, …); the process's own when not given. */
  constructor(
    readonly threads: number,
    env?: NodeJS.ProcessEnv,
  ) {
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be ≥ 1, got ${threads}`);
    // Idle threads do not keep the process alive (Piscina unrefs them); they stay up while the worker runs.
    this.pool = new Piscina({
      filename: rewrapThreadEntry(),
      minThreads: threads,
      maxThreads: threads,
      ...(env && { env: env as Record<string, string> }),
    });
    this.pool.on('error', (err: unknown) => {
      this.broken = new Error(`a crypto thread failed: ${err instanceof Error ? err.message : String(err)}`);
    });
  }

  async rewrap(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    if (this.broken) throw this.broken;
    if (rows.length === 0) return { writes: [], failures: [] };
    const chunks = Math.min(this.threads, Math.ceil(rows.length / MIN_CHUNK_ROWS));
    const size = Math.ceil(rows.length / chunks);
    const parts = await Promise.all(
      Array.from({ length: chunks }, (_, c) =>
        this.runChunk(codec, from, to, rows.slice(c * size, (c + 1) * size), c * size, options),
      ),
    );
    return { writes: parts.flatMap((part) => part.writes), failures: parts.flatMap((part) => part.failures) };
  }

  async rewrapColumns(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: Columns,
    options: RewrapRowsOptions,
  ): Promise<RewrapChunkResult> {
    if (this.broken) throw this.broken;
    if (rows.count === 0) return inlineRowCrypto.rewrapColumns!(codec, from, to, rows, options);
    const chunks = Math.max(1, Math.min(this.threads, Math.ceil(rows.count / MIN_CHUNK_ROWS)));
    const size = Math.ceil(rows.count / chunks);
    const parts = await Promise.all(
      Array.from({ length: chunks }, (_, c) => {
        const start = c * size;
        const end = Math.min(rows.count, start + size);
        const columns: Columns['columns'] = {};
        // Each chunk's columns in buffers of their own, moved to its thread; a column shared by two names once.
        const sliced = new Map<unknown, Columns['columns'][string]>();
        for (const name of codec.readColumns) {
          const column = rows.columns[name]!;
          const key = column.kind === 'values' ? column : column.column;
          let part = sliced.get(key);
          if (!part) {
            part = sliceColumn(column, start, end);
            sliced.set(key, part);
          }
          columns[name] = part;
        }
        return this.runColumns(codec, from, to, { count: end - start, columns }, options);
      }),
    );
    let offset = 0;
    const indexes = new Int32Array(parts.reduce((n, p) => n + p.indexes.length, 0));
    const relabel = new Uint8Array(indexes.length);
    const failures: RewrapChunkResult['failures'] = [];
    let at = 0;
    parts.forEach((part, c) => {
      offset = c * size;
      for (let i = 0; i < part.indexes.length; i++) indexes[at + i] = part.indexes[i]! + offset;
      relabel.set(part.relabel, at);
      at += part.indexes.length;
      for (const failure of part.failures) failures.push({ index: failure.index + offset, reason: failure.reason });
    });
    const width = parts[0]?.values.length ?? 0;
    const values = Array.from({ length: width }, (_, c) => concatColumns(parts.map((part) => part.values[c]!)));
    return { indexes, relabel, values, failures };
  }

  /** Verification is not the hot path (a sample, and rows that hide under another label): in this thread. */
  check(codec: Codec, kek: RowKek, rows: readonly Row[]): Promise<(string | undefined)[]> {
    return inlineRowCrypto.check(codec, kek, rows);
  }

  private async runChunk(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: Row[],
    /** Where the chunk starts in its batch. */
    offset: number,
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    // Each chunk carries its own copies of the two keys, moved (not copied) to the thread that zeroizes them.
    const fromKey = keyCopy(from.key);
    const toKey = keyCopy(to.key);
    // Only what the codec reads: the rest of the row ($id, $label, the version) stays here.
    const packed = packRows(rows, codec.readColumns);
    const task: RewrapChunk = {
      format: codec.format,
      from: { kekId: from.kekId, key: fromKey },
      to: { kekId: to.kekId, key: toKey },
      rows: packed,
      options,
    };
    try {
      const chunk = (await this.pool.run(task, {
        name: 'rewrapChunk',
        transferList: [fromKey, toKey, ...transferables(packed.columns)],
      })) as RewrapChunkResult;
      return chunkResult(chunk, offset);
    } finally {
      // Moved: these are detached and empty. Not moved (the pool refused the task): zeroized here.
      for (const key of [fromKey, toKey]) if (key.byteLength > 0) new Uint8Array(key).fill(0);
    }
  }

  /** Runs another task the threads' script exports (rewrap-thread.ts: `migrateChunk`) on the same threads. */
  async runTask<T>(name: string, task: unknown, transferList: ArrayBuffer[]): Promise<T> {
    if (this.broken) throw this.broken;
    return (await this.pool.run(task, { name, transferList })) as T;
  }

  private async runColumns(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: Columns,
    options: RewrapRowsOptions,
  ): Promise<RewrapChunkResult> {
    const fromKey = keyCopy(from.key);
    const toKey = keyCopy(to.key);
    const task: RewrapChunk = {
      format: codec.format,
      from: { kekId: from.kekId, key: fromKey },
      to: { kekId: to.kekId, key: toKey },
      rows,
      options,
    };
    try {
      return (await this.pool.run(task, {
        name: 'rewrapChunk',
        transferList: [fromKey, toKey, ...transferables(rows.columns)],
      })) as RewrapChunkResult;
    } finally {
      for (const key of [fromKey, toKey]) if (key.byteLength > 0) new Uint8Array(key).fill(0);
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

function keyCopy(key: Buffer): ArrayBuffer {
  const copy = new ArrayBuffer(key.length);
  new Uint8Array(copy).set(key);
  return copy;
}

/** REKEY_CRYPTO_THREADS: a whole number of threads, 0 for none; unset, the cores this process may use. */
export function cryptoThreadsFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.REKEY_CRYPTO_THREADS;
  if (raw === undefined || raw.trim() === '') return os.availableParallelism();
  const threads = Number(raw);
  if (!Number.isInteger(threads) || threads < 0 || threads > 256) {
    throw new ConfigError(
      `REKEY_CRYPTO_THREADS must be a whole number from 0 (crypto in the activity's thread) to 256, got '${raw}'`,
    );
  }
  return threads;
}

export function createRowCrypto(threads: number): RowCrypto {
  return threads === 0 ? inlineRowCrypto : new ThreadedRowCrypto(threads);
}

let shared: RowCrypto | undefined;

/** The process's pool, made on first use from REKEY_CRYPTO_THREADS, for activities not given one. */
export function sharedRowCrypto(): RowCrypto {
  shared ??= createRowCrypto(cryptoThreadsFromEnv());
  return shared;
}

/**
 * The thread's script: compiled JavaScript beside this file. Run from the TypeScript sources (the tests), there is
 * none: the entry is bundled once with esbuild (a development dependency) into node_modules/.cache, named by its
 * content, so every process of a run shares it.
 */
function rewrapThreadEntry(): string {
  const compiled = path.join(__dirname, 'rewrap-thread.js');
  if (fs.existsSync(compiled)) return compiled;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const esbuild = require('esbuild') as typeof import('esbuild');
  const built = esbuild.buildSync({
    entryPoints: [path.join(__dirname, 'rewrap-thread.ts')],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    write: false,
    logLevel: 'silent',
  });
  const text = built.outputFiles[0]!.text;
  const file = path.join(
    projectRoot,
    'node_modules',
    '.cache',
    'rekey',
    `rekey-rewrap-thread-${createHash('sha256').update(text).digest('hex').slice(0, 16)}.js`,
  );
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const temporary = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(temporary, text);
    fs.renameSync(temporary, file);
  }
  return file;
}
