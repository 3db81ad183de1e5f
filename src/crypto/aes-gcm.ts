// AES-256-GCM for the codecs. A key is either a Buffer (Node's crypto: a cipher object and a key schedule per value)
// or a KeySchedule from the native addon (native/aes-gcm: one schedule per KEK, reused for a whole chunk of rows).
// Both give byte-identical output (test/unit/aes-gcm.test.ts). REKEY_AES_GCM picks: auto (the addon when it loads),
// native (the addon or an error), node.
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { readToolchain, type Toolchain } from '../dev/toolchain';
import { ConfigError } from '../errors';

const TAG_BYTES = 16;

/** A key expanded once in native memory; `release` zeroizes it. */
export interface KeySchedule {
  readonly native: true;
  seal(nonce: Buffer, plaintext: Buffer, aad: Buffer): { ciphertext: Buffer; tag: Buffer };
  /** undefined when authentication fails. */
  open(nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer): Buffer | undefined;
  /** Writes `ciphertext ‖ tag` into `out` (the plaintext's length + 16 bytes). */
  sealInto(nonce: Buffer, plaintext: Buffer, aad: Buffer, out: Buffer): void;
  /** Writes the plaintext into `out` (the ciphertext's length): false, and `out` zeroized, when it does not open. */
  openInto(nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer, out: Buffer): boolean;
  release(): void;
  /** Expands another key in this schedule, the one it held zeroized first: false when the addon cannot. */
  rekey(key: Buffer): boolean;
}

export type AeadKey = Buffer | KeySchedule;

export function gcmSeal(
  key: AeadKey,
  nonce: Buffer,
  plaintext: Buffer,
  aad: Buffer,
): { ciphertext: Buffer; tag: Buffer } {
  if (!Buffer.isBuffer(key)) return key.seal(nonce, plaintext, aad);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const ciphertext = cipher.update(plaintext);
  cipher.final();
  return { ciphertext, tag: cipher.getAuthTag() };
}

export function gcmOpen(key: AeadKey, nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer): Buffer | undefined {
  if (!Buffer.isBuffer(key)) return key.open(nonce, ciphertext, tag, aad);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  const plaintext = decipher.update(ciphertext);
  try {
    decipher.final();
    return plaintext;
  } catch {
    plaintext.fill(0);
    return undefined;
  }
}

interface NativeGcmKey {
  sealInto(nonce: Buffer, plaintext: Buffer, aad: Buffer, out: Buffer): void;
  openInto(nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer, out: Buffer): boolean;
  /** Absent from an addon built before it (REKEY_AES_GCM_ADDON naming an older build). */
  rekey?(key: Buffer): void;
  release(): void;
}
interface NativeAddon {
  GcmKey: new (key: Buffer) => NativeGcmKey;
  /** A chunk rewrapped in one call (src/crypto/native-chunk.ts); absent from an addon built before it. */
  rewrapChunk?: NativeRewrapChunk;
  /** A chunk of a migration in one call (src/rewrap/migrate-native.ts); absent from an addon built before it. */
  migrateChunk?: NativeMigrateChunk;
}

/** native/aes-gcm `migrate_chunk`: the arguments after the KEK, as src/rewrap/migrate-native.ts passes them. */
export type NativeMigrateChunk = (
  kek: unknown,
  kekId: Uint8Array,
  dekForm: Uint8Array,
  dekRecipe: Uint8Array,
  dekValueLengths: Int32Array,
  dekValueBytes: Uint8Array,
  dekAadLengths: readonly Int32Array[],
  dekAadBytes: readonly Uint8Array[],
  legacyForms: readonly Uint8Array[],
  legacyRecipes: readonly Uint8Array[],
  currentForms: readonly Uint8Array[],
  currentRecipes: readonly Uint8Array[],
  tenantLengths: Int32Array,
  tenantBytes: Uint8Array,
  valueLengths: readonly Int32Array[],
  valueBytes: readonly Uint8Array[],
  nonces: Uint8Array,
  out: readonly Uint8Array[],
  outLengths: readonly Int32Array[],
  outcomes: Uint8Array,
) => number;

/** native/aes-gcm `rewrap_chunk`: the arguments after the two keys, as src/crypto/native-chunk.ts passes them. */
export type NativeRewrapChunk = (
  from: unknown,
  to: unknown,
  form: Uint8Array,
  recipe: Uint8Array,
  fromKekId: Uint8Array,
  toKekId: Uint8Array,
  valueLengths: Int32Array,
  valueBytes: Uint8Array,
  aadLengths: readonly Int32Array[],
  aadBytes: readonly Uint8Array[],
  nonces: Uint8Array,
  out: Uint8Array,
  outLengths: Int32Array,
  indexes: Int32Array,
  outcomes: Uint8Array,
) => number;

export interface AesGcmBackend {
  name: 'native' | 'node';
  /** Where the addon came from, or why Node's AES-GCM is used. */
  detail: string;
  addon?: NativeAddon;
}

let backend: AesGcmBackend | undefined;

/** Where the addon is: REKEY_AES_GCM_ADDON, else where `npm run setup` built it (.toolchain.json). */
function addonPath(env: NodeJS.ProcessEnv): { file?: string; why: string } {
  if (env.REKEY_AES_GCM_ADDON) return { file: env.REKEY_AES_GCM_ADDON, why: 'REKEY_AES_GCM_ADDON' };
  let toolchain: Toolchain;
  try {
    toolchain = readToolchain();
  } catch (err) {
    return { why: `REKEY_AES_GCM_ADDON is not set and ${err instanceof Error ? err.message : String(err)}` };
  }
  if (toolchain.aesGcmAddon) return { file: toolchain.aesGcmAddon, why: 'built by npm run setup' };
  return { why: toolchain.aesGcmAddonMissing ?? 'npm run setup has not built it' };
}

/** Decides once per thread which AES-GCM the rewrap uses. */
export function loadAesGcmBackend(env: NodeJS.ProcessEnv = process.env): AesGcmBackend {
  const mode = env.REKEY_AES_GCM ?? 'auto';
  if (!['auto', 'native', 'node'].includes(mode)) {
    throw new ConfigError(`REKEY_AES_GCM must be auto, native or node, got '${mode}'`);
  }
  if (mode === 'node') return { name: 'node', detail: 'REKEY_AES_GCM=node' };
  const { file, why } = addonPath(env);
  let failure = why;
  if (file) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const addon = require(file) as NativeAddon;
      return { name: 'native', detail: `${file} (${why})`, addon };
    } catch (err) {
      failure = `${file} did not load: ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  if (mode === 'native') throw new ConfigError(`REKEY_AES_GCM=native, but the native AES-GCM addon: ${failure}`);
  return { name: 'node', detail: `the native addon is not in use: ${failure}` };
}

export function aesGcmBackend(): AesGcmBackend {
  backend ??= loadAesGcmBackend();
  return backend;
}

/**
 * The key as the codecs should use it for many values: a native schedule when the addon is in use (release it when
 * done), else the key itself.
 */
export function scheduleKey(key: Buffer): AeadKey {
  const { addon } = aesGcmBackend();
  return addon ? nativeSchedule(addon, key) : key;
}

export function nativeSchedule(addon: NativeAddon, key: Buffer): KeySchedule {
  return new NativeSchedule(new addon.GcmKey(key), addon);
}

/**
 * The addon's one call for a chunk (native/aes-gcm `rewrap_chunk`) bound to two schedules, when both are native ones
 * of an addon that has it: undefined otherwise (Node's AES-GCM, or an addon built before it).
 */
export function nativeChunkCall(
  from: AeadKey,
  to: AeadKey,
):
  | ((...args: Parameters<NativeRewrapChunk> extends [unknown, unknown, ...infer Rest] ? Rest : never) => number)
  | undefined {
  if (!(from instanceof NativeSchedule) || !(to instanceof NativeSchedule)) return undefined;
  const call = from.addon?.rewrapChunk;
  if (!call || from.addon !== to.addon) return undefined;
  const fromKey = from.nativeKey;
  const toKey = to.nativeKey;
  return (...args) => call(fromKey, toKey, ...args);
}

/**
 * The addon's one call for a chunk of a migration (native/aes-gcm `migrate_chunk`) bound to the KEK's schedule, when
 * it is a native one of an addon that has it: undefined otherwise.
 */
export function nativeMigrateCall(
  kek: AeadKey,
): ((...args: Parameters<NativeMigrateChunk> extends [unknown, ...infer Rest] ? Rest : never) => number) | undefined {
  if (!(kek instanceof NativeSchedule)) return undefined;
  const call = kek.addon?.migrateChunk;
  if (!call) return undefined;
  const key = kek.nativeKey;
  return (...args) => call(key, ...args);
}

/** A class, not an object of closures: a migration makes one per DEK, a few hundred thousand in a run. */
class NativeSchedule implements KeySchedule {
  readonly native = true as const;

  constructor(
    private readonly key: NativeGcmKey,
    /** The addon that made it, for its chunk call (nativeChunkCall). */
    readonly addon?: NativeAddon,
  ) {}

  /** The addon's object, for its chunk call. */
  get nativeKey(): NativeGcmKey {
    return this.key;
  }

  seal(nonce: Buffer, plaintext: Buffer, aad: Buffer): { ciphertext: Buffer; tag: Buffer } {
    const sealed = Buffer.allocUnsafe(plaintext.length + TAG_BYTES);
    this.key.sealInto(nonce, plaintext, aad, sealed);
    return { ciphertext: sealed.subarray(0, plaintext.length), tag: sealed.subarray(plaintext.length) };
  }

  open(nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer): Buffer | undefined {
    const plaintext = Buffer.allocUnsafe(ciphertext.length);
    return this.key.openInto(nonce, ciphertext, tag, aad, plaintext) ? plaintext : undefined;
  }

  sealInto(nonce: Buffer, plaintext: Buffer, aad: Buffer, out: Buffer): void {
    this.key.sealInto(nonce, plaintext, aad, out);
  }

  openInto(nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer, out: Buffer): boolean {
    return this.key.openInto(nonce, ciphertext, tag, aad, out);
  }

  release(): void {
    this.key.release();
  }

  /** `key` expanded in this object (a released one): false when the addon cannot. */
  rekey(key: Buffer): boolean {
    if (!this.key.rekey) return false;
    this.key.rekey(key);
    return true;
  }
}

/** Released native schedules this thread may expand another key in (reusableSchedule), at most REUSED_MAX. */
const reused: NativeSchedule[] = [];
const REUSED_MAX = 4096;

/**
 * scheduleKey for one of many short-lived keys (a migration's DEKs, one per tenant): a schedule recycleKey released
 * earlier in this thread, expanded again, when there is one. A new native schedule per key costs native memory that
 * only the garbage collector's finalizer frees, which a crypto thread's small heap seldom runs: a worker's memory
 * grew with the number of tenants it had seen.
 */
export function reusableSchedule(key: Buffer): AeadKey {
  const schedule = reused.pop();
  if (schedule?.rekey(key)) return schedule;
  return scheduleKey(key);
}

/** Releases (zeroizes) a schedule from reusableSchedule and keeps it for the next; a Buffer is zeroized. */
export function recycleKey(key: AeadKey): void {
  if (Buffer.isBuffer(key)) {
    key.fill(0);
    return;
  }
  key.release();
  if (key instanceof NativeSchedule && reused.length < REUSED_MAX) reused.push(key);
}

/** Releases a schedule made by scheduleKey (a Buffer is the caller's to zeroize). */
export function releaseKey(key: AeadKey): void {
  if (!Buffer.isBuffer(key)) key.release();
}
