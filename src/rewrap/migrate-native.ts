// A chunk of `rekey migrate-dek` rows in one native call (native/aes-gcm `migrate_chunk`): per row the tenant's DEK is
// opened under the first KEK from the DEK row read with it, and each legacy field opened under that KEK and sealed
// under the DEK, with the associated data built in the addon from the formats' recipes (compiled as the rotation's
// chunk call compiles them, src/crypto/native-chunk.ts) and the chunk's nonces drawn here. Per field in JavaScript
// that was a decode, the associated data twice, two calls across N-API and an encode; here it is one call per chunk.
// A row the addon does not take whole goes through migrateChunk's per-field path, which gives its outcome and reason.
import type { Codec } from '../codec/sealed-format';
import { nativeMigrateCall, type AeadKey } from '../crypto/aes-gcm';
import type { ByteColumn, Columns } from '../crypto/columns';
import { programFor } from '../crypto/native-chunk';

/** migrate-chunk.ts's codecs and columns, as much of them as this reads (declared here: that module imports this). */
export interface MigrateCodecs {
  dek: Codec;
  legacy: Codec[];
  current: Codec[];
}
interface MigrateColumns {
  count: number;
  tenants: ByteColumn;
  values: ByteColumn[];
  /** The DEK row read with each row: its id (NULL where none was read) and columns. */
  dek: { ids: ByteColumn; columns: Columns };
}

/** The addon's outcome of a row (native/aes-gcm MIGRATE_*). */
export const MIGRATE_WRITTEN = 0;
export const MIGRATE_LEFT = 1;
export const MIGRATE_EMPTY = 2;

export interface NativeMigrated {
  /** Each row's outcome (MIGRATE_*). */
  outcomes: Uint8Array;
  /** By field: the taken rows' new values, in row order (-1: NULL). */
  values: ByteColumn[];
  /** How many rows were taken. */
  written: number;
}

/** What the addon reads of the codecs, or null where only the per-field path applies. */
interface Plan {
  dek: { form: Uint8Array; recipe: Uint8Array; value: string; columns: string[] };
  legacyForms: Uint8Array[];
  legacyRecipes: Uint8Array[];
  currentForms: Uint8Array[];
  currentRecipes: Uint8Array[];
  /** Each current form's prefix length: a new value is at most this much longer than the legacy one. */
  growth: number;
}

const plans = new WeakMap<MigrateCodecs, Plan | null>();

function planFor(codecs: MigrateCodecs): Plan | null {
  let plan = plans.get(codecs);
  if (plan === undefined) {
    plan = compilePlan(codecs);
    plans.set(codecs, plan);
  }
  return plan;
}

/** A base64 text form whose recipe reads at most the tenant (as the field's codecs read it). */
function fieldProgram(codec: Codec) {
  const program = programFor(codec);
  if (!program || codec.inPlace?.encoding !== 'base64') return null;
  if (program.columns.some((column) => column !== 'tenant')) return null;
  return program;
}

function compilePlan(codecs: MigrateCodecs): Plan | null {
  const dek = programFor(codecs.dek);
  const dekForm = codecs.dek.inPlace;
  if (!dek || !dekForm || dekForm.encoding !== 'base64' || dekForm.aadKekId) return null;
  const legacy = codecs.legacy.map(fieldProgram);
  const current = codecs.current.map(fieldProgram);
  if (legacy.some((p) => !p) || current.some((p) => !p)) return null;
  return {
    dek: { form: dek.form, recipe: dek.recipe, value: dekForm.column, columns: dek.columns },
    legacyForms: legacy.map((p) => p!.form),
    legacyRecipes: legacy.map((p) => p!.recipe),
    currentForms: current.map((p) => p!.form),
    currentRecipes: current.map((p) => p!.recipe),
    growth: Math.max(...codecs.current.map((c) => c.inPlace!.prefix.length)),
  };
}

/**
 * The chunk through the addon's one call, or undefined where it does not apply (Node's AES-GCM, an addon built before
 * it, formats it does not read, a DEK column not packed as text). `nonces` holds one nonce for each non-NULL value of
 * the chunk, in row order, field by field.
 */
export function migrateChunkNative(
  codecs: MigrateCodecs,
  kek: { kekId: string; key: AeadKey },
  rows: MigrateColumns,
  nonces: Buffer,
  given?: Readonly<Record<string, Readonly<Record<string, unknown>> | string>>,
): NativeMigrated | undefined {
  const plan = planFor(codecs);
  if (!plan) return undefined;
  const call = nativeMigrateCall(kek.key);
  if (!call) return undefined;
  const dekColumns = rows.dek.columns.columns;
  const read = dekColumns[plan.dek.value];
  if (read?.kind !== 'text') return undefined;
  let value = read.column;
  const aad: ByteColumn[] = [];
  for (const name of plan.dek.columns) {
    const column = dekColumns[name];
    if (column?.kind !== 'text') return undefined;
    aad.push(column.column);
  }
  if (given) {
    const merged = withGiven(rows, given, [plan.dek.value, ...plan.dek.columns], [value, ...aad]);
    if (merged) {
      value = merged[0]!;
      aad.splice(0, aad.length, ...merged.slice(1));
    }
  }
  const { count } = rows;
  // A new value is as long as the legacy one and the current prefix (the same bytes, in the same base64). Zeroed,
  // not allocUnsafe: the buffers go to another thread whole.
  const out = rows.values.map((column) => new Uint8Array(column.bytes.length + plan.growth * count));
  const outLengths = rows.values.map(() => new Int32Array(count));
  const outcomes = new Uint8Array(count);
  const written = call(
    Buffer.from(kek.kekId, 'utf8'),
    plan.dek.form,
    plan.dek.recipe,
    value.lengths,
    value.bytes,
    aad.map((c) => c.lengths),
    aad.map((c) => c.bytes),
    plan.legacyForms,
    plan.legacyRecipes,
    plan.currentForms,
    plan.currentRecipes,
    rows.tenants.lengths,
    rows.tenants.bytes,
    rows.values.map((c) => c.lengths),
    rows.values.map((c) => c.bytes),
    nonces.length === 0 ? new Uint8Array(0) : nonces,
    out,
    outLengths,
    outcomes,
  );
  const values = out.map((bytes, f) => {
    const lengths = outLengths[f]!.subarray(0, written);
    let total = 0;
    for (const length of lengths) if (length > 0) total += length;
    return { lengths, bytes: bytes.subarray(0, total) };
  });
  return { outcomes, values, written };
}

/**
 * The DEK row's columns with, for each row read without one (its tenant's DEK provisioned for the batch, or re-read),
 * the text of the DEK row given by tenant in its place; undefined when no row needs it. A given DEK row whose columns
 * are not text stays NULL: the per-field path takes that row.
 */
function withGiven(
  rows: MigrateColumns,
  given: Readonly<Record<string, Readonly<Record<string, unknown>> | string>>,
  names: string[],
  columns: ByteColumn[],
): ByteColumn[] | undefined {
  const { count } = rows;
  const ids = rows.dek.ids;
  let missing = false;
  for (let i = 0; i < count && !missing; i++) if (ids.lengths[i]! < 0) missing = true;
  if (!missing) return undefined;
  const tenants = rows.tenants;
  const starts = new Int32Array(count);
  for (let i = 0, at = 0; i < count; i++) {
    starts[i] = at;
    if (tenants.lengths[i]! > 0) at += tenants.lengths[i]!;
  }
  const tenantBytes = Buffer.from(tenants.bytes.buffer, tenants.bytes.byteOffset, tenants.bytes.length);
  return columns.map((column, c) => {
    const parts: Uint8Array[] = [];
    const lengths = new Int32Array(count);
    let at = 0;
    let total = 0;
    for (let i = 0; i < count; i++) {
      const length = column.lengths[i]!;
      if (length >= 0) {
        parts.push(column.bytes.subarray(at, at + length));
        at += length;
        lengths[i] = length;
        total += length;
        continue;
      }
      lengths[i] = -1;
      if (ids.lengths[i]! >= 0 || tenants.lengths[i]! < 0) continue;
      const tenant = tenantBytes.toString('utf8', starts[i], starts[i]! + tenants.lengths[i]!);
      const row = given[tenant];
      const text = typeof row === 'object' ? row[names[c]!] : undefined;
      if (typeof text !== 'string') continue;
      const bytes = Buffer.from(text, 'utf8');
      parts.push(bytes);
      lengths[i] = bytes.length;
      total += bytes.length;
    }
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const part of parts) {
      bytes.set(part, offset);
      offset += part.length;
    }
    return { lengths, bytes };
  });
}
