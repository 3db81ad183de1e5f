// The crypto of a batch of `rekey migrate-dek` rows (src/rewrap/migrate-rows.ts), apart from its SQL so that it runs in
// the rotation's crypto threads (src/crypto/rewrap-thread.ts runs it as the task `migrateChunk`) or in the caller's
// thread: each tenant's DEK unwrapped once under the KEKs, every legacy field of a row opened under the KEKs and sealed
// under its tenant's DEK. AES-GCM through the native schedules when the addon is in use. DEKs never leave this
// function: they are released before it returns.
import { randomBytes } from 'node:crypto';
import { NONCE_BYTES, type Codec, type Row, type SealedFormat } from '../codec/sealed-format';
import { releaseKey, scheduleKey, type AeadKey } from '../crypto/aes-gcm';
import type { FieldsRow, FieldsWrite } from '../store/row-fields-store';
import { UnreadableValueError } from '../errors';

/** A tenant's wrapped DEK as the target's table holds it (a TargetRow: its columns, `$id`, `$label`). */
export type WrappedDek = Row & { $id: string; $label: string };

export interface MigrateChunkInput {
  /** The KEKs to try, in order (the one new DEKs are wrapped with first). */
  keks: { kekId: string; key: Buffer }[];
  rows: FieldsRow[];
  /** Each tenant's DEK row, or why the tenant has none (WOULD_PROVISION in a dry run). */
  deks: Record<string, WrappedDek | string>;
  dryRun: boolean;
}

export interface MigrateChunkResult {
  /** Rows with at least one field sealed, in the order read. */
  writes: FieldsWrite[];
  /** By field of the group: values that could not be sealed. */
  unreadable: number[];
  /** Why, by row and field of the group (bounded by the caller). */
  failures: { row: string; field: number; reason: string }[];
}

/** In a dry run, a tenant without a DEK: the run would provision one, so its values only need to open. */
export const WOULD_PROVISION = 'would provision';

export interface MigrateCodecs {
  dek: Codec;
  legacy: Codec[];
  current: Codec[];
}

export function migrateChunk(codecs: MigrateCodecs, input: MigrateChunkInput): MigrateChunkResult {
  const keks = input.keks.map((k) => ({ kekId: k.kekId, key: scheduleKey(k.key) }));
  const deks = new Map<string, AeadKey | string>();
  const result: MigrateChunkResult = { writes: [], unreadable: codecs.legacy.map(() => 0), failures: [] };
  // The chunk's nonces from one call to the CSPRNG (one per value it may seal), each used once.
  const nonces = new Nonces(input.rows.reduce((n, row) => n + row.values.filter((v) => v !== null).length, 0));
  try {
    for (const row of input.rows) {
      let dek = deks.get(row.tenant);
      if (dek === undefined) {
        const stored = input.deks[row.tenant];
        dek = stored === undefined ? `no DEK for tenant ${row.tenant}` : unwrap(codecs.dek, keks, stored);
        deks.set(row.tenant, dek);
      }
      const old: (string | null)[] = row.values.map(() => null);
      const value: (string | null)[] = row.values.map(() => null);
      row.values.forEach((stored, i) => {
        if (stored === null) return;
        const sealed = seal(codecs, keks, row, i, stored, dek, nonces);
        if (typeof sealed === 'string') {
          result.unreadable[i]! += 1;
          result.failures.push({ row: row.id, field: i, reason: sealed });
          return;
        }
        old[i] = stored;
        value[i] = sealed.value;
      });
      if (value.some((v) => v !== null)) result.writes.push({ id: row.id, old, value });
    }
    return result;
  } finally {
    for (const dek of deks.values()) if (typeof dek !== 'string') release(dek);
    for (const kek of keks) releaseKey(kek.key);
  }
}

function unwrap(codec: Codec, keks: { kekId: string; key: AeadKey }[], row: WrappedDek | string): AeadKey | string {
  if (typeof row === 'string') return row;
  const reasons: string[] = [];
  for (const kek of keks) {
    let dek: Buffer;
    try {
      dek = codec.open(kek.key, row, row.$label);
    } catch (err) {
      if (!(err instanceof UnreadableValueError)) throw err;
      reasons.push(`'${kek.kekId}': ${err.reason}`);
      continue;
    }
    const schedule = scheduleKey(dek);
    // A native schedule holds its own copy: the raw bytes go at once.
    if (schedule !== dek) dek.fill(0);
    return schedule;
  }
  return `tenant ${row.$id}'s DEK does not unwrap under any KEK held (${reasons.join('; ')})`;
}

function seal(
  codecs: MigrateCodecs,
  keks: { kekId: string; key: AeadKey }[],
  row: FieldsRow,
  i: number,
  stored: string,
  dek: AeadKey | string,
  nonces: Nonces,
): { value: string } | string {
  if (typeof dek === 'string' && dek !== WOULD_PROVISION) return dek;
  const plaintext = openLegacy(codecs.legacy[i]!, keks, row, stored);
  if (typeof plaintext === 'string') return plaintext;
  try {
    // A dry run whose tenant has no DEK yet: the value only needs to open.
    if (typeof dek === 'string') return { value: '' };
    const [sealed] = codecs.current[i]!.seal(dek, plaintext, { value: null, tenant: row.tenant }, '', nonces.next());
    return { value: String(sealed) };
  } finally {
    plaintext.fill(0);
  }
}

function openLegacy(
  legacy: Codec,
  keks: { kekId: string; key: AeadKey }[],
  row: FieldsRow,
  stored: string,
): Buffer | string {
  const problem = legacy.check({ value: stored });
  if (problem !== undefined) return problem;
  const reasons: string[] = [];
  for (const kek of keks) {
    try {
      return legacy.open(kek.key, { value: stored, tenant: row.tenant }, kek.kekId);
    } catch (err) {
      if (!(err instanceof UnreadableValueError)) throw err;
      reasons.push(`'${kek.kekId}': ${err.reason}`);
    }
  }
  return `does not decrypt under any KEK held (${reasons.join('; ')})`;
}

/** Fresh random nonces cut from one buffer: never the same bytes twice. */
class Nonces {
  private readonly pool: Buffer;
  private used = 0;

  constructor(count: number) {
    this.pool = randomBytes(Math.max(1, count) * NONCE_BYTES);
  }

  next(): Buffer {
    if (this.used + NONCE_BYTES > this.pool.length) return randomBytes(NONCE_BYTES);
    const nonce = this.pool.subarray(this.used, this.used + NONCE_BYTES);
    this.used += NONCE_BYTES;
    return nonce;
  }
}

function release(key: AeadKey): void {
  if (Buffer.isBuffer(key)) key.fill(0);
  else releaseKey(key);
}

/** The formats a thread compiles its codecs from (codecs do not cross threads). */
export interface MigrateFormats {
  dek: SealedFormat;
  legacy: SealedFormat[];
  current: SealedFormat[];
}

/** A chunk of a batch as it goes to a crypto thread: formats, key copies moved there, and the rows. */
export interface MigrateChunkTask {
  formats: MigrateFormats;
  keks: { kekId: string; key: ArrayBuffer }[];
  rows: FieldsRow[];
  deks: Record<string, WrappedDek | string>;
  dryRun: boolean;
}

const compiled = new Map<string, MigrateCodecs>();

/** The task `migrateChunk` of the crypto threads: zeroizes the moved key copies when done. */
export function migrateChunkTask(task: MigrateChunkTask, compile: (format: SealedFormat) => Codec): MigrateChunkResult {
  const keks = task.keks.map((k) => ({ kekId: k.kekId, key: Buffer.from(k.key) }));
  try {
    const name = JSON.stringify(task.formats);
    let codecs = compiled.get(name);
    if (!codecs) {
      codecs = {
        dek: compile(task.formats.dek),
        legacy: task.formats.legacy.map(compile),
        current: task.formats.current.map(compile),
      };
      compiled.set(name, codecs);
    }
    // A Buffer crosses threads as a Uint8Array: bytea columns are Buffers again here.
    const deks: Record<string, WrappedDek | string> = {};
    for (const [tenant, dek] of Object.entries(task.deks)) {
      deks[tenant] =
        typeof dek === 'string'
          ? dek
          : (Object.fromEntries(
              Object.entries(dek).map(([column, value]) => [
                column,
                value instanceof Uint8Array && !Buffer.isBuffer(value)
                  ? Buffer.from(value.buffer, value.byteOffset, value.byteLength)
                  : value,
              ]),
            ) as WrappedDek);
    }
    return migrateChunk(codecs, { keks, rows: task.rows, deks, dryRun: task.dryRun });
  } finally {
    for (const kek of keks) kek.key.fill(0);
  }
}
