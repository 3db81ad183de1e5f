// The crypto of a batch of `rekey migrate-dek` rows (src/rewrap/migrate-rows.ts), apart from its SQL so that it runs in
// the rotation's crypto threads (src/crypto/rewrap-thread.ts runs it as the task `migrateChunk`) or in the caller's
// thread: each tenant's DEK unwrapped once under the KEKs, every legacy field of a row opened under the KEKs and sealed
// under its tenant's DEK. Rows come and go by column (src/crypto/columns.ts), as the rotation's do: the batch's
// tenants, its legacy values and its DEK rows packed as the binary COPY read them, the new values packed as the
// compare-and-swap sends them; no object per row crosses between threads. AES-GCM through the native schedules when
// the addon is in use. DEKs never leave this function: they are released before it returns.
import { randomBytes } from 'node:crypto';
import {
  decodedLength,
  NONCE_BYTES,
  TAG_BYTES,
  type Codec,
  type InPlaceForm,
  type PackedField,
  type Row,
  type SealedFormat,
} from '../codec/sealed-format';
import { base64Length, decodeBase64Into, encodeBase64Into } from '../codec/base64-bytes';
import {
  recycleKey,
  releaseKey,
  reusableSchedule,
  scheduleKey,
  type AeadKey,
  type KeySchedule,
} from '../crypto/aes-gcm';
import { unpackColumn, type ByteColumn, type Column, type Columns } from '../crypto/columns';
import { UnreadableValueError } from '../errors';
import {
  MIGRATE_EMPTY,
  MIGRATE_LEFT,
  MIGRATE_WRITTEN,
  migrateChunkNative,
  type MigrateCodecs,
  type NativeMigrated,
} from './migrate-native';

/** A tenant's wrapped DEK as the target's table holds it (a TargetRow: its columns, `$id`, `$label`). */
export type WrappedDek = Row & { $id: string; $label: string };

/** A batch's (or a chunk's) rows by column. */
export interface MigrateColumns {
  count: number;
  /** The tenant whose DEK each row's fields go under (text). */
  tenants: ByteColumn;
  /** By field of the group: the legacy value (text), or NULL where the field is not legacy. */
  values: ByteColumn[];
  /** Each row's tenant's DEK row, read with it: its id (NULL where there is no DEK to read), label and columns. */
  dek: { ids: ByteColumn; labels: ByteColumn; columns: Columns };
}

export interface MigrateChunkInput {
  /** The KEKs to try, in order (the one new DEKs are wrapped with first). */
  keks: { kekId: string; key: Buffer }[];
  rows: MigrateColumns;
  /**
   * For the rows whose DEK was not read with them (a DEK provisioned for this batch, or re-read after another writer
   * provisioned it first), by tenant: the DEK row, or why the tenant has none (WOULD_PROVISION in a dry run).
   */
  deks: Record<string, WrappedDek | string>;
  dryRun: boolean;
}

export interface MigrateChunkResult {
  /** Rows with at least one field sealed, by index in the chunk, ascending. */
  indexes: Int32Array;
  /** By field of the group: the new value of each written row (NULL where that field is not written). */
  values: ByteColumn[];
  /** By field of the group: values that could not be sealed. */
  unreadable: number[];
  /** Why, by row index and field of the group (bounded by the caller). */
  failures: { index: number; field: number; reason: string }[];
}

/** In a dry run, a tenant without a DEK: the run would provision one, so its values only need to open. */
export const WOULD_PROVISION = 'would provision';

export type { MigrateCodecs };

/**
 * Text values packed one after another into a buffer that grows as needed. A row's value is staged after the last
 * one kept (stage*), then kept or dropped with the row (keep): a row is kept once every field of it is sealed.
 */
class TextColumnWriter {
  private bytes = Buffer.allocUnsafe(4096);
  private at = 0;
  readonly lengths: Int32Array;
  private rows = 0;

  constructor(capacity: number) {
    this.lengths = new Int32Array(capacity);
  }

  private room(size: number): void {
    if (this.at + size <= this.bytes.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.at + size, this.bytes.length * 2));
    this.bytes.copy(bigger, 0, 0, this.at);
    this.bytes.fill(0, 0, this.at);
    this.bytes = bigger;
  }

  /** Stages `value`: its length in bytes. */
  stageText(value: string): number {
    const size = Buffer.byteLength(value, 'utf8');
    this.room(size);
    this.bytes.write(value, this.at, 'utf8');
    return size;
  }

  /** Stages `length` bytes of `input` from `start`: its length. */
  stageBytes(input: Uint8Array, start: number, length: number): number {
    this.room(length);
    this.bytes.set(input.subarray(start, start + length), this.at);
    return length;
  }

  /** Stages `prefix` and the standard base64 of `raw[0, size)`: its length in bytes. */
  stageBase64(prefix: Buffer, raw: Buffer, size: number): number {
    const length = prefix.length + base64Length(size);
    this.room(length);
    prefix.copy(this.bytes, this.at);
    encodeBase64Into(raw, 0, size, this.bytes, this.at + prefix.length);
    return length;
  }

  /** Keeps the row: the value staged, `length` bytes long, or NULL (-1). */
  keep(length: number): void {
    this.lengths[this.rows++] = length;
    if (length > 0) this.at += length;
  }

  /** The packed column, in buffers of its own (to be moved back to the caller's thread). */
  done(): ByteColumn {
    const bytes = new Uint8Array(this.at);
    bytes.set(this.bytes.subarray(0, this.at));
    return { lengths: this.lengths.slice(0, this.rows), bytes };
  }
}

/** For tests: the chunk's nonces (12 bytes for each non-NULL value), and whether to try the addon's one call. */
export interface MigrateChunkOptions {
  nonces?: Buffer;
  native?: boolean;
}

/**
 * The chunk's crypto. Each non-NULL value has its own nonce, its slot in row order, field by field, whichever way it
 * goes: the addon's one call for the chunk (migrate-native.ts) takes every row it can whole, and the rest go the way
 * below, value by value, with the same outcome, reason and bytes as if the addon had not been called.
 */
export function migrateChunk(
  codecs: MigrateCodecs,
  input: MigrateChunkInput,
  options: MigrateChunkOptions = {},
): MigrateChunkResult {
  const { rows } = input;
  const { count } = rows;
  const fieldCount = codecs.legacy.length;
  const keks = input.keks.map((k) => ({ kekId: k.kekId, key: scheduleKey(k.key) }));
  // The chunk's nonces from one call to the CSPRNG (one per value it may seal), each used once.
  let sealable = 0;
  for (const column of rows.values) for (const length of column.lengths) if (length >= 0) sealable++;
  const nonces = new Nonces(sealable, options.nonces);
  let native: NativeMigrated | undefined;
  try {
    if (!input.dryRun && options.native !== false && keks[0] && sealable > 0) {
      native = migrateChunkNative(codecs, keks[0], rows, nonces.pool, input.deks);
    }
  } catch (err) {
    for (const kek of keks) releaseKey(kek.key);
    throw err;
  }
  if (native && native.outcomes.every((outcome) => outcome !== MIGRATE_LEFT)) {
    for (const kek of keks) releaseKey(kek.key);
    const indexes = new Int32Array(native.written);
    let k = 0;
    for (let i = 0; i < count; i++) if (native.outcomes[i] === MIGRATE_WRITTEN) indexes[k++] = i;
    return { indexes, values: native.values, unreadable: codecs.legacy.map(() => 0), failures: [] };
  }
  const deks = new Map<string, AeadKey | string>();
  // A column given under two names (the DEK's id, which its codec reads too) is unpacked once.
  const unpacked = new Map<unknown, unknown[]>();
  const unpack = (column: Column): unknown[] => {
    const key = column.kind === 'values' ? column : column.column;
    let values = unpacked.get(key);
    if (!values) {
      values = unpackColumn(column);
      unpacked.set(key, values);
    }
    return values;
  };
  const text = (column: ByteColumn) => unpack({ kind: 'text', column }) as (string | null)[];
  let tenantStrings: (string | null)[] | undefined;
  // Each field's legacy values where they lie in their packed column (made strings only for the codecs' way).
  const values = rows.values.map((column) => ({
    column,
    bytes: Buffer.from(column.bytes.buffer, column.bytes.byteOffset, column.bytes.length),
    offset: 0,
  }));
  // The row's tenant as the current form's associated data reads it: its packed bytes.
  const tenantField: PackedField = { bytes: rows.tenants.bytes, start: 0, length: -1 };
  // The DEK row's text columns where they lie (PackedField, moved along row by row): its value and what its associated
  // data reads, opened from their bytes; made strings only where that does not do.
  const dekFields: Record<string, PackedField> = {};
  const dekCursors: { field: PackedField; lengths: Int32Array }[] = [];
  for (const [name, column] of Object.entries(rows.dek.columns.columns)) {
    if (column.kind !== 'text') continue;
    const field = { bytes: column.column.bytes, start: 0, length: -1 };
    dekFields[name] = field;
    dekCursors.push({ field, lengths: column.column.lengths });
  }
  let dekStrings:
    { ids: (string | null)[]; labels: (string | null)[]; columns: (readonly [string, unknown[]])[] } | undefined;
  const dekRow = () =>
    (dekStrings ??= {
      ids: text(rows.dek.ids),
      labels: text(rows.dek.labels),
      columns: Object.entries(rows.dek.columns.columns).map(([name, column]) => [name, unpack(column)] as const),
    });
  // The DEK's row as its codec reads it, one object reused for every row (a row the codecs' way gets its own).
  const dekView: Record<string, unknown> = {};
  const out = Array.from({ length: fieldCount }, () => new TextColumnWriter(count));
  const indexes = new Int32Array(count);
  let written = 0;
  const unreadable = codecs.legacy.map(() => 0);
  const failures: MigrateChunkResult['failures'] = [];
  // Where the addon's next value of each field lies in its output.
  const nativeAt = native?.values.map(() => ({ row: 0, offset: 0 }));
  let slot = 0;
  const staged = new Int32Array(fieldCount);
  const fast = new InPlace(codecs, keks);
  try {
    for (let i = 0; i < count; i++) {
      if (tenantField.length > 0) tenantField.start += tenantField.length;
      tenantField.length = rows.tenants.lengths[i]!;
      for (const { field, lengths } of dekCursors) {
        if (field.length > 0) field.start += field.length;
        field.length = lengths[i]!;
      }
      const outcome = native?.outcomes[i];
      if (outcome === MIGRATE_WRITTEN || outcome === MIGRATE_EMPTY) {
        // Taken by the addon (or nothing to take): its values staged as they are, the cursors moved past the row.
        for (let f = 0; f < fieldCount; f++) {
          const length = values[f]!.column.lengths[i]!;
          if (length > 0) values[f]!.offset += length;
          if (length >= 0) slot++;
        }
        if (outcome === MIGRATE_EMPTY) continue;
        indexes[written++] = i;
        for (let f = 0; f < fieldCount; f++) {
          const at = nativeAt![f]!;
          const column = native!.values[f]!;
          const length = column.lengths[at.row++]!;
          if (length >= 0) {
            out[f]!.stageBytes(column.bytes, at.offset, length);
            at.offset += length;
          }
          out[f]!.keep(length);
        }
        continue;
      }
      const tenant = (tenantStrings ??= text(rows.tenants))[i]!;
      let dek = deks.get(tenant);
      if (dek === undefined) {
        const read = rows.dek.ids.lengths[i]! >= 0;
        dek = read ? fast.unwrapPacked(dekFields, () => dekRow().labels[i] ?? '') : undefined;
        if (dek === undefined) {
          let stored: WrappedDek | string | undefined;
          if (read) {
            const strings = dekRow();
            dekView.$id = strings.ids[i];
            dekView.$label = strings.labels[i];
            for (const [name, column] of strings.columns) dekView[name] = column[i];
            stored = dekView as WrappedDek;
          } else stored = input.deks[tenant];
          dek =
            stored === undefined
              ? `no DEK for tenant ${tenant}`
              : (fast.unwrap(stored) ??
                unwrap(codecs.dek, keks, stored === dekView ? ({ ...dekView } as WrappedDek) : stored));
        }
        deks.set(tenant, dek);
      }
      let any = false;
      for (let f = 0; f < fieldCount; f++) {
        staged[f] = -1;
        const field = values[f]!;
        const length = field.column.lengths[i]!;
        const start = field.offset;
        if (length > 0) field.offset += length;
        if (length < 0) continue;
        nonces.seek(slot++);
        const bytes = fast.sealPacked(f, tenantField, field.bytes, start, length, dek, nonces, out[f]!);
        if (bytes >= 0) {
          staged[f] = bytes;
          any = true;
          continue;
        }
        const value = field.bytes.toString('utf8', start, start + length);
        const result = fast.seal(f, tenant, value, dek, nonces) ?? seal(codecs, keks, f, tenant, value, dek, nonces);
        if (typeof result === 'string') {
          unreadable[f]! += 1;
          failures.push({ index: i, field: f, reason: result });
          continue;
        }
        staged[f] = out[f]!.stageText(result.value);
        any = true;
      }
      if (!any) continue;
      indexes[written++] = i;
      for (let f = 0; f < fieldCount; f++) out[f]!.keep(staged[f]!);
    }
    return { indexes: indexes.slice(0, written), values: out.map((w) => w.done()), unreadable, failures };
  } finally {
    fast.wipe();
    for (const dek of deks.values()) if (typeof dek !== 'string') recycleKey(dek);
    for (const kek of keks) releaseKey(kek.key);
  }
}

const isNative = (key: AeadKey): key is KeySchedule => !Buffer.isBuffer(key);

/** Views of InPlace's scratch buffers for one plaintext length: the sealed value's parts, in `raw` and in `out`. */
interface Spans {
  nonce: Buffer;
  body: Buffer;
  tag: Buffer;
  clear: Buffer;
  outNonce: Buffer;
  sealed: Buffer;
}

/**
 * The common case without the codecs' objects: a value in its one-column text form (Codec.inPlace) decoded into a
 * scratch buffer, opened under the first KEK straight into another, sealed under the DEK into a third, and encoded
 * once; a DEK unwrapped the same way. Anything else (another form, a value or DEK that does not open under the first
 * KEK, Node's AES-GCM) answers undefined, and the caller takes the codecs' way, which gives the same outcome and
 * reason as before. Every scratch buffer that held a plaintext or a DEK is zeroized (wipe).
 */
class InPlace {
  private readonly raw = Buffer.alloc(1024);
  /** The views of the scratch buffers for a value of `n` plaintext bytes, made once per length (see spans). */
  private readonly byLength: (Spans | undefined)[] = [];
  private readonly clear = Buffer.alloc(1024);
  private readonly out = Buffer.alloc(1024);
  private readonly scratch = Buffer.alloc(256);
  private readonly view: Record<string, unknown> = {};
  private readonly packed: Record<string, PackedField> = {};
  private readonly kek: { kekId: string; key: KeySchedule } | undefined;
  private readonly dek: InPlaceForm | undefined;
  private readonly legacy: (InPlaceForm | undefined)[];
  private readonly current: { form: InPlaceForm; prefix: string }[] | undefined;

  /** Each form's prefix as text. */
  private readonly prefixes = new Map<InPlaceForm, string>();

  constructor(codecs: MigrateCodecs, keks: { kekId: string; key: AeadKey }[]) {
    const first = keks[0];
    const text = (form: InPlaceForm | undefined) => (form && form.encoding !== 'bytea' ? form : undefined);
    this.kek = first && isNative(first.key) ? { kekId: first.kekId, key: first.key } : undefined;
    this.dek = text(codecs.dek.inPlace);
    this.legacy = codecs.legacy.map((c) => text(c.inPlace));
    const current = codecs.current.map((c) => text(c.inPlace));
    this.current = current.every((f) => f !== undefined)
      ? current.map((form) => ({ form, prefix: form.prefix.toString('utf8') }))
      : undefined;
    for (const form of [this.dek, ...this.legacy, ...current]) {
      if (form) this.prefixes.set(form, form.prefix.toString('utf8'));
    }
  }

  /**
   * The scratch buffers' views for `n` plaintext bytes, made on first use and kept: each value would otherwise make
   * seven typed arrays to hand the native calls their ranges.
   */
  private spans(n: number): Spans {
    let spans = this.byLength[n];
    if (!spans) {
      const body = NONCE_BYTES + n;
      spans = {
        nonce: this.raw.subarray(0, NONCE_BYTES),
        body: this.raw.subarray(NONCE_BYTES, body),
        tag: this.raw.subarray(body, body + TAG_BYTES),
        clear: this.clear.subarray(0, n),
        outNonce: this.out.subarray(0, NONCE_BYTES),
        sealed: this.out.subarray(NONCE_BYTES, body + TAG_BYTES),
      };
      this.byLength[n] = spans;
    }
    return spans;
  }

  /** `encoded` (after its prefix) decoded into `raw`: its length, or -1 when it is not exactly the encoding. */
  private decode(form: InPlaceForm, stored: string): number {
    const prefix = this.prefixes.get(form)!;
    if (!stored.startsWith(prefix)) return -1;
    const encoded = prefix.length > 0 ? stored.slice(prefix.length) : stored;
    const encoding = form.encoding as Exclude<InPlaceForm['encoding'], 'bytea'>;
    const expected = decodedLength(encoded, encoding);
    if (expected < NONCE_BYTES + TAG_BYTES || expected > this.raw.length) return -1;
    return this.raw.write(encoded, 0, this.raw.length, encoding) === expected ? expected : -1;
  }

  /** Opens what `decode` put in `raw` under the first KEK into `clear`: the plaintext's length, or -1. */
  private open(form: InPlaceForm, size: number, row: Row, kekId: string): number {
    const n = size - NONCE_BYTES - TAG_BYTES;
    if (form.plaintextBytes !== undefined && n !== form.plaintextBytes) return -1;
    let aad: Buffer;
    try {
      aad = form.aad(row, kekId, this.scratch);
    } catch (err) {
      if (err instanceof UnreadableValueError) return -1;
      throw err;
    }
    const { nonce, body, tag, clear } = this.spans(n);
    return this.kek!.key.openInto(nonce, body, tag, aad, clear) ? n : -1;
  }

  /**
   * The tenant's DEK from the DEK row's packed text columns (its value in base64, what its associated data reads),
   * opened under the first KEK: a key schedule, or undefined to take `unwrap`'s way with the row's strings.
   */
  unwrapPacked(row: Readonly<Record<string, PackedField>>, label: () => string): AeadKey | undefined {
    const form = this.dek;
    if (!form || !this.kek || form.encoding !== 'base64') return undefined;
    const value = row[form.column];
    if (!value || value.length < 0 || !form.aadColumns.every((column) => row[column] !== undefined)) return undefined;
    const p = form.prefix.length;
    if (value.length < p) return undefined;
    for (let k = 0; k < p; k++) if (value.bytes[value.start + k] !== form.prefix[k]) return undefined;
    const size = decodeBase64Into(value.bytes, value.start + p, value.start + value.length, this.raw);
    const n = size - NONCE_BYTES - TAG_BYTES;
    if (n < 0 || (form.plaintextBytes !== undefined && n !== form.plaintextBytes)) return undefined;
    const aad = form.aadPacked(row, form.aadKekId ? label() : '', this.scratch);
    if (!aad) return undefined;
    const { nonce, body, tag, clear: dek } = this.spans(n);
    try {
      if (!this.kek.key.openInto(nonce, body, tag, aad, dek)) return undefined;
      // The schedule holds its own copy; the scratch bytes are zeroized here.
      const schedule = reusableSchedule(dek);
      return isNative(schedule) ? schedule : undefined;
    } finally {
      dek.fill(0);
    }
  }

  /** The tenant's DEK as a key schedule, or undefined to take the codecs' way. */
  unwrap(row: WrappedDek | string): AeadKey | undefined {
    const form = this.dek;
    if (typeof row === 'string' || !form || !this.kek) return undefined;
    const stored = row[form.column];
    if (typeof stored !== 'string') return undefined;
    const size = this.decode(form, stored);
    if (size < 0) return undefined;
    const n = this.open(form, size, row, row.$label);
    if (n < 0) return undefined;
    const dek = this.spans(n).clear;
    try {
      // The schedule holds its own copy; the scratch bytes are zeroized here.
      const schedule = reusableSchedule(dek);
      return isNative(schedule) ? schedule : undefined;
    } finally {
      dek.fill(0);
    }
  }

  /**
   * Field `f`'s legacy value, `length` bytes of `input` from `start`, opened under the first KEK and sealed under `dek`
   * with no string: decoded from its bytes, the associated data built from the tenant's packed bytes, and staged in
   * `writer` as its prefix and base64. The bytes staged, or -1 where only `seal` (a string) or the codecs can tell
   * (another encoding or form, associated data that reads more than the tenant, a value that does not open).
   */
  sealPacked(
    f: number,
    tenant: PackedField,
    input: Buffer,
    start: number,
    length: number,
    dek: AeadKey | string,
    nonces: Nonces,
    writer: TextColumnWriter,
  ): number {
    const legacy = this.legacy[f];
    const current = this.current?.[f];
    if (!legacy || !current || !this.kek || typeof dek === 'string' || !isNative(dek)) return -1;
    if (legacy.encoding !== 'base64' || current.form.encoding !== 'base64') return -1;
    if (!this.tenantOnly(legacy) || !this.tenantOnly(current.form)) return -1;
    const p = legacy.prefix.length;
    if (length < p) return -1;
    for (let k = 0; k < p; k++) if (input[start + k] !== legacy.prefix[k]) return -1;
    const { clear, out, packed } = this;
    const size = decodeBase64Into(input, start + p, start + length, this.raw);
    const n = size - NONCE_BYTES - TAG_BYTES;
    if (n < 0) return -1;
    if (legacy.plaintextBytes !== undefined && n !== legacy.plaintextBytes) return -1;
    if (current.form.plaintextBytes !== undefined && n !== current.form.plaintextBytes) return -1;
    packed.tenant = tenant;
    const opening = legacy.aadPacked(packed, this.kek.kekId, this.scratch);
    if (!opening) return -1;
    const spans = this.spans(n);
    try {
      if (!this.kek.key.openInto(spans.nonce, spans.body, spans.tag, opening, spans.clear)) return -1;
      const sealing = current.form.aadPacked(packed, '', this.scratch);
      if (!sealing) return -1;
      nonces.copyNext(out);
      dek.sealInto(spans.outNonce, spans.clear, sealing, spans.sealed);
      return writer.stageBase64(current.form.prefix, out, size);
    } finally {
      clear.fill(0, 0, n);
    }
  }

  /** True when the form's associated data reads no column but the tenant (as `seal` gives it: its view's `tenant`). */
  private tenantOnly(form: InPlaceForm): boolean {
    return form.aadColumns.every((column) => column === 'tenant');
  }

  /** Field `f`'s legacy value opened under the first KEK and sealed under `dek`, or undefined. */
  seal(
    f: number,
    tenant: string,
    stored: string,
    dek: AeadKey | string,
    nonces: Nonces,
  ): { value: string } | undefined {
    const legacy = this.legacy[f];
    const current = this.current?.[f];
    if (!legacy || !current || !this.kek || typeof dek === 'string' || !isNative(dek)) return undefined;
    const size = this.decode(legacy, stored);
    if (size < 0) return undefined;
    const view = this.view;
    view.value = stored;
    view.tenant = tenant;
    const n = this.open(legacy, size, view, this.kek.kekId);
    if (n < 0) return undefined;
    const { clear, out } = this;
    try {
      if (current.form.plaintextBytes !== undefined && n !== current.form.plaintextBytes) return undefined;
      view.value = null;
      let aad: Buffer;
      try {
        aad = current.form.aad(view, '', this.scratch);
      } catch (err) {
        if (err instanceof UnreadableValueError) return undefined;
        throw err;
      }
      nonces.copyNext(out);
      const spans = this.spans(n);
      dek.sealInto(spans.outNonce, spans.clear, aad, spans.sealed);
      return { value: current.prefix + out.toString(current.form.encoding as BufferEncoding, 0, size) };
    } finally {
      clear.fill(0, 0, n);
    }
  }

  wipe(): void {
    this.raw.fill(0);
    this.clear.fill(0);
    this.out.fill(0);
    this.scratch.fill(0);
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
    const schedule = reusableSchedule(dek);
    // A native schedule holds its own copy: the raw bytes go at once.
    if (schedule !== dek) dek.fill(0);
    return schedule;
  }
  return `tenant ${row.$id}'s DEK does not unwrap under any KEK held (${reasons.join('; ')})`;
}

function seal(
  codecs: MigrateCodecs,
  keks: { kekId: string; key: AeadKey }[],
  field: number,
  tenant: string,
  stored: string,
  dek: AeadKey | string,
  nonces: Nonces,
): { value: string } | string {
  if (typeof dek === 'string' && dek !== WOULD_PROVISION) return dek;
  const plaintext = openLegacy(codecs.legacy[field]!, keks, tenant, stored);
  if (typeof plaintext === 'string') return plaintext;
  try {
    // A dry run whose tenant has no DEK yet: the value only needs to open.
    if (typeof dek === 'string') return { value: '' };
    const [sealed] = codecs.current[field]!.seal(dek, plaintext, { value: null, tenant }, '', nonces.next());
    return { value: String(sealed) };
  } finally {
    plaintext.fill(0);
  }
}

function openLegacy(
  legacy: Codec,
  keks: { kekId: string; key: AeadKey }[],
  tenant: string,
  stored: string,
): Buffer | string {
  const problem = legacy.check({ value: stored });
  if (problem !== undefined) return problem;
  const reasons: string[] = [];
  for (const kek of keks) {
    try {
      return legacy.open(kek.key, { value: stored, tenant }, kek.kekId);
    } catch (err) {
      if (!(err instanceof UnreadableValueError)) throw err;
      reasons.push(`'${kek.kekId}': ${err.reason}`);
    }
  }
  return `does not decrypt under any KEK held (${reasons.join('; ')})`;
}

/** Fresh random nonces cut from one buffer, one slot per value (seek): never the same bytes twice. */
class Nonces {
  readonly pool: Buffer;
  private used = 0;

  constructor(count: number, given?: Buffer) {
    if (given && given.length !== count * NONCE_BYTES) throw new Error(`the nonces given are not ${count} × 12 bytes`);
    this.pool = given ?? randomBytes(count * NONCE_BYTES);
  }

  /** The next nonce is slot `slot`'s. */
  seek(slot: number): void {
    this.used = slot * NONCE_BYTES;
  }

  next(): Buffer {
    if (this.used + NONCE_BYTES > this.pool.length) return randomBytes(NONCE_BYTES);
    const nonce = this.pool.subarray(this.used, this.used + NONCE_BYTES);
    this.used += NONCE_BYTES;
    return nonce;
  }

  /** The next nonce written into the first bytes of `out`, with no view made of it. */
  copyNext(out: Buffer): void {
    if (this.used + NONCE_BYTES > this.pool.length) {
      randomBytes(NONCE_BYTES).copy(out, 0);
      return;
    }
    this.pool.copy(out, 0, this.used, this.used + NONCE_BYTES);
    this.used += NONCE_BYTES;
  }
}

/** The formats a thread compiles its codecs from (codecs do not cross threads). */
export interface MigrateFormats {
  dek: SealedFormat;
  legacy: SealedFormat[];
  current: SealedFormat[];
}

/** A chunk of a batch as it goes to a crypto thread: formats, key copies moved there, and the rows by column. */
export interface MigrateChunkTask {
  formats: MigrateFormats;
  keks: { kekId: string; key: ArrayBuffer }[];
  rows: MigrateColumns;
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
    // A Buffer crosses threads as a Uint8Array: the bytea columns of the few DEK rows given by tenant are Buffers
    // again here (those of the packed columns become Buffers when unpacked).
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
