// One description of how an application stores an AES-256-GCM value (a wrapped DEK, or a secret encrypted directly
// by a KEK) and binds it with associated data. rekey's own format and the presets for Mycelium and Talos are all
// written in it (src/codec/formats.ts); the compiled codec below reads and writes any of them.
import { gcmOpen, gcmSeal, type AeadKey } from '../crypto/aes-gcm';
import { FormatError, UnreadableValueError } from '../errors';

export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

/** How bytes are written in a column: bytea, or text in one of three alphabets. */
export type Encoding = 'bytea' | 'base64' | 'base64url' | 'hex';
export const ENCODINGS: readonly Encoding[] = ['bytea', 'base64', 'base64url', 'hex'];

export type ValueLayout =
  | {
      /** nonce ‖ ciphertext ‖ tag in one column, after an optional prefix. */
      kind: 'combined';
      column: string;
      encoding: Encoding;
      /**
       * Required on read and written on write: text before the encoded bytes ('v2:'), or for bytea the leading bytes
       * in hex ('01', rekey's format byte).
       */
      prefix?: string;
    }
  | {
      /** Ciphertext, nonce and tag each in a column of its own. */
      kind: 'split';
      ciphertext: string;
      nonce: string;
      tag: string;
      encoding: Encoding;
    };

/** One piece of associated data. A recipe is the concatenation of its parts. */
export type AadPart =
  | { text: string }
  | { hex: string }
  | {
      column: string;
      /** utf8: the column's text; uuid: the 16 raw bytes of a UUID. */
      as?: 'utf8' | 'uuid';
      /** Prefix the part with its length as a 32-bit big-endian integer (keeps concatenations unambiguous). */
      lengthPrefix?: boolean;
    }
  | { kekId: true; lengthPrefix?: boolean };

export interface AadSpec {
  /** Recipes a reader tries in order; a write always uses the first. */
  read: AadPart[][];
  /** A column where a write stores the associated data it used (Talos: `aad`, base64url). */
  store?: { column: string; encoding: Exclude<Encoding, 'bytea'> | 'bytea' };
}

export interface SealedFormat {
  value: ValueLayout;
  aad: AadSpec;
  /** Fixed plaintext length (32 for a DEK); omitted for secrets of any length. */
  plaintextBytes?: number;
  /**
   * Values in the same (bytea, combined) column wrapped by AWS KMS instead of with key bytes: `prefix` (hex), then
   * KMS's ciphertext blob, bound by an encryption context of the named columns and the KEK id (`rekey:kek`). Only KMS
   * opens them (src/crypto/kms-row-crypto.ts); the codec reads their form and knows them apart.
   */
  kms?: KmsForm;
  /**
   * Values in the same (bytea, combined) column wrapped by Vault Transit: `prefix` (hex), then Transit's ciphertext
   * (`vault:v<n>:<base64>`, ASCII), under a derived key whose context binds the named column (the tenant). Only Vault
   * opens them (src/crypto/transit-row-crypto.ts).
   */
  transit?: TransitForm;
}

export interface TransitForm {
  prefix: string;
  /** The column whose text the derivation context binds (with a fixed label). */
  context: string;
}

/** A Transit-wrapped value in a row: the codec's view of it (`Codec.transit`). */
export interface TransitValues {
  /** True when the row's value is in the Transit form (it starts with the prefix). */
  is(row: Row): boolean;
  /** Transit's ciphertext text; UnreadableValueError when the value is not a well-formed one. */
  ciphertext(row: Row): string;
  /** The key version the ciphertext names (`vault:v<n>:`). */
  version(ciphertext: string): number;
  /** The column value that stores `ciphertext`. */
  value(ciphertext: string): Buffer;
  /** The derivation context of the row, base64 as Transit takes it. */
  context(row: Row): string;
}

export interface KmsForm {
  prefix: string;
  /** Encryption context key → the column whose text is its value. */
  context: Record<string, string>;
}

/** The encryption context key that binds a KMS-wrapped value to the KEK id it is labelled with. */
export const KMS_CONTEXT_KEK = 'rekey:kek';
/** KMS's largest ciphertext blob. */
const KMS_BLOB_MAX = 6144;

/** A KMS-wrapped value in a row: the codec's view of it (`Codec.kms`). */
export interface KmsValues {
  /** True when the row's value is in the KMS form (it starts with the prefix). */
  is(row: Row): boolean;
  /** The ciphertext blob; UnreadableValueError when the value is not in the KMS form. */
  blob(row: Row): Buffer;
  /** The column value that stores `blob`. */
  value(blob: Uint8Array): Buffer;
  /** The encryption context a value of this row under `kekId` is bound by. */
  context(row: Row, kekId: string): Record<string, string>;
}

/** A row as the database returned it: column name → text, bytea (Buffer) or null. */
export type Row = Readonly<Record<string, unknown>>;
export type ColumnValue = string | Buffer;

export interface Codec {
  readonly format: SealedFormat;
  /** Every column a reader needs: the value's and those the AAD recipes read. */
  readonly readColumns: readonly string[];
  /** The columns a write sets, in the order `seal` returns their values. */
  readonly writeColumns: readonly string[];
  /** Why the stored form is malformed (before any key is tried), or undefined when it is well-formed. */
  check(row: Row): string | undefined;
  /** Decrypts the row's value with `key`, trying each AAD recipe; throws UnreadableValueError. */
  open(key: AeadKey, row: Row, kekId: string): Buffer;
  /** Encrypts `plaintext` for the row under a KEK labelled `kekId`: the values of writeColumns. */
  seal(key: AeadKey, plaintext: Buffer, row: Row, kekId: string, nonce: Buffer): ColumnValue[];
  /** The KMS form of the format's values, if it has one. */
  readonly kms?: KmsValues;
  /** The Vault Transit form of the format's values, if it has one. */
  readonly transit?: TransitValues;
  /** Present when a rewrap may work on the stored bytes where they lie (src/crypto/column-rewrap.ts). */
  readonly inPlace?: InPlaceForm;
}

/**
 * A format whose stored value is `prefix ‖ nonce ‖ ciphertext ‖ tag` in one column (bytea, or text: the prefix, then
 * the encoded bytes), with one associated-data recipe and nothing else written: a rewrap can read and write such
 * values within packed columns, with no row objects. A row it cannot handle that way (not that form, or not opening
 * under the key) goes through `open`.
 */
export interface InPlaceForm {
  readonly column: string;
  readonly encoding: Encoding;
  /** The prefix's bytes: for bytea as the format gives them in hex, for text its UTF-8. */
  readonly prefix: Buffer;
  readonly plaintextBytes?: number;
  /** The associated data of the row under `kekId`, in `scratch` when it fits (a view of it). */
  aad(row: Row, kekId: string, scratch: Buffer): Buffer;
  /**
   * The same associated data from the row's text columns as packed UTF-8 bytes (one PackedField per column the recipe
   * reads), in `scratch` when it fits; undefined where only `aad` can tell (a NULL, a UUID not in its 36- or
   * 32-character form, bytes that are not ASCII): the caller then builds the row's strings and calls `aad`.
   */
  aadPacked(row: Readonly<Record<string, PackedField>>, kekId: string, scratch: Buffer): Buffer | undefined;
  /** The text columns aadPacked reads. */
  readonly aadColumns: readonly string[];
  /** Whether the associated data binds the KEK id. */
  readonly aadKekId: boolean;
}

/** A text column's value for InPlaceForm.aadPacked: `length` bytes of `bytes` from `start` (-1: NULL). */
export interface PackedField {
  bytes: Uint8Array;
  start: number;
  length: number;
}

const TEXT_PATTERN: Record<Exclude<Encoding, 'bytea'>, RegExp> = {
  base64: /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/,
  base64url: /^[A-Za-z0-9_-]*={0,2}$/,
  hex: /^(?:[0-9a-fA-F]{2})*$/,
};

/** How many bytes well-formed text of this length decodes to (Node's decoders skip what they do not know). */
export function decodedLength(text: string, encoding: Exclude<Encoding, 'bytea'>): number {
  if (encoding === 'hex') return text.length % 2 === 0 ? text.length / 2 : -1;
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 61 /* = */) end--;
  if (encoding === 'base64' && text.length % 4 !== 0) return -1;
  return end % 4 === 1 ? -1 : Math.floor((end * 3) / 4);
}

function decode(value: unknown, encoding: Encoding, what: string): Buffer {
  if (value === null || value === undefined) throw new UnreadableValueError(`${what} is NULL`);
  if (encoding === 'bytea') {
    if (!Buffer.isBuffer(value)) throw new UnreadableValueError(`${what} is not bytea`);
    return value;
  }
  if (typeof value !== 'string') throw new UnreadableValueError(`${what} is not text`);
  // Runs for every row of a rewrap: a decoder skips characters it does not know, so a length that adds up means
  // nothing was skipped; the (slower) pattern is only consulted when it does not.
  const bytes = Buffer.from(value, encoding);
  if (bytes.length !== decodedLength(value, encoding) && !TEXT_PATTERN[encoding].test(value)) {
    throw new UnreadableValueError(`${what} is not ${encoding}`);
  }
  return bytes;
}

function encode(bytes: Buffer, encoding: Encoding): ColumnValue {
  if (encoding === 'bytea') return bytes;
  return bytes.toString(encoding); // Node writes base64 with padding and base64url without, as the formats want
}

const UUID = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;

/** The 16 raw bytes of a UUID written as text. */
export function uuidBytes(text: string): Buffer {
  if (!UUID.test(text)) throw new UnreadableValueError(`'${text}' is not a UUID`);
  return Buffer.from(text.replace(/-/g, ''), 'hex');
}

/** Builds a row's associated data: in `scratch` (a view of it) when it fits there, else in a buffer of its own. */
type AadBuilder = (row: Row, kekId: string, scratch?: Buffer) => Buffer;

/** One part of a recipe: its bytes (a fixed buffer, or text written as UTF-8, or a UUID's 16 bytes). */
type PartValue = Buffer | string;

/** The 32 hex digits of a UUID in its usual text form (dashes at 8, 13, 18, 23), or of 32 bare digits. */
function uuidHex(text: string): string {
  if (
    text.length === 36 &&
    text.charCodeAt(8) === 45 &&
    text.charCodeAt(13) === 45 &&
    text.charCodeAt(18) === 45 &&
    text.charCodeAt(23) === 45
  ) {
    return text.slice(0, 8) + text.slice(9, 13) + text.slice(14, 18) + text.slice(19, 23) + text.slice(24);
  }
  if (UUID.test(text)) return text.replace(/-/g, '');
  throw new UnreadableValueError(`'${text}' is not a UUID`);
}

/**
 * Compiles a recipe into a function that builds the associated data in a single allocation: it runs twice per row
 * in a rewrap, so it must not allocate a buffer per part.
 */
function compileRecipe(parts: AadPart[]): AadBuilder {
  const pieces = parts.map(
    (part): { value: (row: Row, kekId: string) => PartValue; prefixed: boolean; uuid: boolean } => {
      if ('text' in part) {
        const fixed = Buffer.from(part.text, 'utf8');
        return { value: () => fixed, prefixed: false, uuid: false };
      }
      if ('hex' in part) {
        const fixed = Buffer.from(part.hex, 'hex');
        return { value: () => fixed, prefixed: false, uuid: false };
      }
      if ('column' in part) {
        const { column } = part;
        const uuid = part.as === 'uuid';
        return {
          value: (row) => {
            const value = row[column];
            if (value === null || value === undefined) throw new UnreadableValueError(`${column} is NULL`);
            // The store reads associated-data columns as text (ids, names, UUIDs).
            if (typeof value !== 'string') throw new UnreadableValueError(`${column} is not text`);
            return uuid ? uuidHex(value) : value;
          },
          prefixed: part.lengthPrefix === true,
          uuid,
        };
      }
      return { value: (_row, kekId) => kekId, prefixed: part.lengthPrefix === true, uuid: false };
    },
  );
  const values: PartValue[] = new Array<PartValue>(pieces.length);
  const sizes: number[] = new Array<number>(pieces.length);
  return (row, kekId, scratch) => {
    let total = 0;
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      const value = piece.value(row, kekId);
      values[i] = value;
      const size = typeof value === 'string' ? (piece.uuid ? 16 : Buffer.byteLength(value, 'utf8')) : value.length;
      sizes[i] = size;
      total += size + (piece.prefixed ? 4 : 0);
    }
    const out = scratch && scratch.length >= total ? scratch.subarray(0, total) : Buffer.allocUnsafe(total);
    let offset = 0;
    for (let i = 0; i < pieces.length; i++) {
      const value = values[i]!;
      if (pieces[i]!.prefixed) offset = out.writeUInt32BE(sizes[i]!, offset);
      if (typeof value !== 'string') offset += value.copy(out, offset);
      else if (!pieces[i]!.uuid) offset += out.write(value, offset, 'utf8');
      else {
        // Writing hex stops at the first character that is not a hex digit: 16 bytes or it was no UUID.
        const written = out.write(value, offset, 'hex');
        if (written !== 16) throw new UnreadableValueError(`'${value}' is not a UUID`);
        offset += written;
      }
    }
    return out;
  };
}

/** A hex digit's value, or -1. */
const HEX = new Int8Array(256).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX['0123456789abcdef'.charCodeAt(i)] = i;
  HEX['0123456789ABCDEF'.charCodeAt(i)] = i;
}

/**
 * A UUID's 16 bytes from its text's packed bytes into `out` at `at`, as uuidHex and a hex write read it (36 characters
 * with dashes at 8, 13, 18, 23, or 32 digits): false for anything else.
 */
function packedUuid(field: PackedField, out: Buffer, at: number): boolean {
  const { bytes, start, length } = field;
  const dashed = length === 36;
  if (!dashed && length !== 32) return false;
  if (
    dashed &&
    (bytes[start + 8] !== 45 || bytes[start + 13] !== 45 || bytes[start + 18] !== 45 || bytes[start + 23] !== 45)
  ) {
    return false;
  }
  let k = start;
  for (let o = 0; o < 16; o++) {
    if (dashed && (k - start === 8 || k - start === 13 || k - start === 18 || k - start === 23)) k++;
    const hi = HEX[bytes[k]!]!;
    const lo = HEX[bytes[k + 1]!]!;
    if ((hi | lo) < 0) return false;
    out[at + o] = (hi << 4) | lo;
    k += 2;
  }
  return true;
}

/** A recipe over packed text columns (InPlaceForm.aadPacked): the same bytes compileRecipe's builder writes. */
function compilePackedRecipe(parts: AadPart[]): InPlaceForm['aadPacked'] {
  const pieces = parts.map((part) => {
    if ('text' in part) return { fixed: Buffer.from(part.text, 'utf8') };
    if ('hex' in part) return { fixed: Buffer.from(part.hex, 'hex') };
    if ('column' in part)
      return { column: part.column, uuid: part.as === 'uuid', prefixed: part.lengthPrefix === true };
    return { kekId: true, prefixed: part.lengthPrefix === true };
  });
  return (row, kekId, scratch) => {
    let total = 0;
    for (const piece of pieces) {
      if (piece.fixed) total += piece.fixed.length;
      else if (piece.column !== undefined) {
        const field = row[piece.column];
        if (!field || field.length < 0) return undefined;
        total += (piece.uuid ? 16 : field.length) + (piece.prefixed ? 4 : 0);
      } else total += Buffer.byteLength(kekId, 'utf8') + (piece.prefixed ? 4 : 0);
    }
    const out = scratch.length >= total ? scratch.subarray(0, total) : Buffer.allocUnsafe(total);
    let offset = 0;
    for (const piece of pieces) {
      if (piece.fixed) offset += piece.fixed.copy(out, offset);
      else if (piece.column !== undefined) {
        const field = row[piece.column]!;
        if (piece.uuid) {
          if (piece.prefixed) offset = out.writeUInt32BE(16, offset);
          if (!packedUuid(field, out, offset)) return undefined;
          offset += 16;
        } else {
          // The string's UTF-8 is these bytes when they are ASCII; anything else is left to the string's way.
          const { bytes, start, length } = field;
          for (let k = start; k < start + length; k++) if (bytes[k]! > 0x7f) return undefined;
          if (piece.prefixed) offset = out.writeUInt32BE(length, offset);
          for (let k = 0; k < length; k++) out[offset + k] = bytes[start + k]!;
          offset += length;
        }
      } else {
        const size = Buffer.byteLength(kekId, 'utf8');
        if (piece.prefixed) offset = out.writeUInt32BE(size, offset);
        offset += out.write(kekId, offset, 'utf8');
      }
    }
    return out;
  };
}

function recipeColumns(parts: AadPart[]): string[] {
  return parts.flatMap((part) => ('column' in part ? [part.column] : []));
}

interface Sealed {
  nonce: Buffer;
  ciphertext: Buffer;
  tag: Buffer;
}

/** Checks a description and compiles it into a codec; FormatError names what is wrong. */
export function compileFormat(format: SealedFormat): Codec {
  const { value, aad } = format;
  if (aad.read.length === 0) throw new FormatError('aad.read needs at least one recipe');
  if (format.plaintextBytes !== undefined && !(Number.isInteger(format.plaintextBytes) && format.plaintextBytes > 0)) {
    throw new FormatError('plaintextBytes must be a positive whole number');
  }
  const recipes = aad.read.map(compileRecipe);
  const valueColumns = value.kind === 'combined' ? [value.column] : [value.ciphertext, value.nonce, value.tag];
  const kms = format.kms && compileKmsForm(format.kms, value);
  const transit = format.transit && compileTransitForm(format.transit, value, format.kms);
  const readColumns = [
    ...new Set([
      ...valueColumns,
      ...aad.read.flatMap(recipeColumns),
      ...Object.values(format.kms?.context ?? {}),
      ...(format.transit ? [format.transit.context] : []),
    ]),
  ];
  const writeColumns = [...valueColumns, ...(aad.store ? [aad.store.column] : [])];
  if (new Set(writeColumns).size !== writeColumns.length) throw new FormatError('a column is written twice');

  let parse: (row: Row) => Sealed;
  let store: (sealed: Sealed) => ColumnValue[];
  if (value.kind === 'combined') {
    const { column, encoding } = value;
    const prefix = value.prefix ?? '';
    const prefixBytes = encoding === 'bytea' ? Buffer.from(prefix, 'hex') : Buffer.alloc(0);
    if (encoding === 'bytea' && prefixBytes.length * 2 !== prefix.length) {
      throw new FormatError(`value.prefix '${prefix}' must be hex bytes for a bytea column`);
    }
    const minimum = NONCE_BYTES + TAG_BYTES;
    parse = (row) => {
      let raw: Buffer;
      if (encoding === 'bytea') {
        const bytes = decode(row[column], 'bytea', column);
        if (prefixBytes.length > 0 && !bytes.subarray(0, prefixBytes.length).equals(prefixBytes)) {
          throw new UnreadableValueError(`${column} does not start with the format byte(s) ${prefix}`);
        }
        raw = bytes.subarray(prefixBytes.length);
      } else {
        const text = row[column];
        if (typeof text === 'string' && !text.startsWith(prefix)) {
          throw new UnreadableValueError(`${column} does not start with '${prefix}'`);
        }
        raw = decode(typeof text === 'string' ? text.slice(prefix.length) : text, encoding, column);
      }
      if (raw.length < minimum) throw new UnreadableValueError(`${column} is ${raw.length} bytes, too short`);
      return {
        nonce: raw.subarray(0, NONCE_BYTES),
        ciphertext: raw.subarray(NONCE_BYTES, raw.length - TAG_BYTES),
        tag: raw.subarray(raw.length - TAG_BYTES),
      };
    };
    store = ({ nonce, ciphertext, tag }) => {
      const body = Buffer.concat([prefixBytes, nonce, ciphertext, tag]);
      return [encoding === 'bytea' ? body : prefix + body.toString(encoding)];
    };
  } else {
    const { encoding } = value;
    parse = (row) => ({
      nonce: decode(row[value.nonce], encoding, value.nonce),
      ciphertext: decode(row[value.ciphertext], encoding, value.ciphertext),
      tag: decode(row[value.tag], encoding, value.tag),
    });
    store = ({ nonce, ciphertext, tag }) => [
      encode(ciphertext, encoding),
      encode(nonce, encoding),
      encode(tag, encoding),
    ];
  }

  const checkSealed = (sealed: Sealed): void => {
    if (sealed.nonce.length !== NONCE_BYTES) {
      throw new UnreadableValueError(`nonce is ${sealed.nonce.length} bytes, not ${NONCE_BYTES}`);
    }
    // A shorter tag would be accepted by OpenSSL and weaken authentication: refuse it outright.
    if (sealed.tag.length !== TAG_BYTES) {
      throw new UnreadableValueError(`tag is ${sealed.tag.length} bytes, not ${TAG_BYTES}`);
    }
    if (format.plaintextBytes !== undefined && sealed.ciphertext.length !== format.plaintextBytes) {
      throw new UnreadableValueError(
        `ciphertext is ${sealed.ciphertext.length} bytes, expected ${format.plaintextBytes}`,
      );
    }
  };

  // An empty prefix would not tell a KMS or Transit value apart from a sealed one: those go through `open` only.
  const inPlace: InPlaceForm | undefined =
    value.kind === 'combined' &&
    !aad.store &&
    recipes.length === 1 &&
    ((value.prefix ?? '') !== '' || (!kms && !transit))
      ? {
          column: value.column,
          encoding: value.encoding,
          prefix: Buffer.from(value.prefix ?? '', value.encoding === 'bytea' ? 'hex' : 'utf8'),
          ...(format.plaintextBytes !== undefined && { plaintextBytes: format.plaintextBytes }),
          aad: recipes[0]!,
          aadPacked: compilePackedRecipe(aad.read[0]!),
          aadColumns: recipeColumns(aad.read[0]!),
          aadKekId: aad.read[0]!.some((part) => 'kekId' in part),
        }
      : undefined;

  return {
    format,
    readColumns,
    writeColumns,
    ...(kms && { kms }),
    ...(transit && { transit }),
    ...(inPlace && { inPlace }),
    check(row) {
      try {
        if (kms?.is(row)) kms.blob(row);
        else if (transit?.is(row)) transit.ciphertext(row);
        else checkSealed(parse(row));
        return undefined;
      } catch (err) {
        if (err instanceof UnreadableValueError) return err.reason;
        throw err;
      }
    },
    open(key, row, kekId) {
      if (kms?.is(row)) {
        throw new UnreadableValueError('wrapped by AWS KMS: only KMS opens it (REKEY_KEY_PROVIDER=aws-kms)');
      }
      if (transit?.is(row)) {
        throw new UnreadableValueError(
          'wrapped by Vault Transit: only Vault opens it (REKEY_KEY_PROVIDER=vault-transit)',
        );
      }
      const sealed = parse(row);
      checkSealed(sealed);
      for (const recipe of recipes) {
        let associated: Buffer;
        try {
          associated = recipe(row, kekId);
        } catch (err) {
          if (err instanceof UnreadableValueError && recipes.length > 1) continue; // e.g. no name to bind to
          throw err;
        }
        const plaintext = gcmOpen(key, sealed.nonce, sealed.ciphertext, sealed.tag, associated);
        if (plaintext) return plaintext;
      }
      throw new UnreadableValueError(
        recipes.length === 1
          ? 'authentication failed (wrong key, tampered, or not this row)'
          : `authentication failed under each of its ${recipes.length} associated-data bindings (wrong key, tampered, or not this row)`,
      );
    },
    seal(key, plaintext, row, kekId, nonce) {
      if (format.plaintextBytes !== undefined && plaintext.length !== format.plaintextBytes) {
        throw new RangeError(`plaintext is ${plaintext.length} bytes, expected ${format.plaintextBytes}`);
      }
      if (nonce.length !== NONCE_BYTES) throw new RangeError(`a nonce is ${NONCE_BYTES} bytes`);
      const associated = recipes[0]!(row, kekId);
      const { ciphertext, tag } = gcmSeal(key, nonce, plaintext, associated);
      const values = store({ nonce, ciphertext, tag });
      if (aad.store) values.push(encode(associated, aad.store.encoding));
      return values;
    },
  };
}

function compileKmsForm(form: KmsForm, layout: ValueLayout): KmsValues {
  if (layout.kind !== 'combined' || layout.encoding !== 'bytea') {
    throw new FormatError('kms: a KMS form shares a bytea column with a combined layout');
  }
  const prefix = Buffer.from(form.prefix, 'hex');
  if (prefix.length === 0 || prefix.length * 2 !== form.prefix.length) {
    throw new FormatError(`kms.prefix '${form.prefix}' must be hex bytes`);
  }
  if (layout.prefix !== undefined && layout.prefix.toLowerCase() === form.prefix.toLowerCase()) {
    throw new FormatError('kms.prefix must differ from value.prefix: it is how the two forms are told apart');
  }
  const entries = Object.entries(form.context);
  if (entries.length === 0) throw new FormatError('kms.context must bind at least one column (the row it is for)');
  if (form.context[KMS_CONTEXT_KEK] !== undefined) throw new FormatError(`kms.context: ${KMS_CONTEXT_KEK} is rekey's`);
  const { column } = layout;
  const is = (row: Row) => {
    const value = row[column];
    return Buffer.isBuffer(value) && value.length > prefix.length && value.subarray(0, prefix.length).equals(prefix);
  };
  return {
    is,
    blob(row) {
      if (!is(row))
        throw new UnreadableValueError(`${column} is not a KMS ciphertext (no format byte(s) ${form.prefix})`);
      const blob = (row[column] as Buffer).subarray(prefix.length);
      if (blob.length > KMS_BLOB_MAX)
        throw new UnreadableValueError(`${column} is ${blob.length} bytes, too long for KMS`);
      return blob;
    },
    value: (blob) => Buffer.concat([prefix, blob]),
    context(row, kekId) {
      const context: Record<string, string> = {};
      for (const [key, source] of entries) {
        const text = row[source];
        if (typeof text !== 'string' || text === '') throw new UnreadableValueError(`${source} is not text`);
        context[key] = text;
      }
      context[KMS_CONTEXT_KEK] = kekId;
      return context;
    },
  };
}

/** Transit's ciphertext: `vault:v<n>:` and standard base64. */
const TRANSIT_CIPHERTEXT = /^vault:v([1-9][0-9]{0,9}):[A-Za-z0-9+/]+={0,2}$/;
/** The label the derivation context starts with: a context is rekey's, for a DEK, in this version of the binding. */
const TRANSIT_CONTEXT_LABEL = 'rekey/transit-dek/v1\0';
/** Longer than any DEK's ciphertext (a 32-byte DEK is about 70 characters). */
const TRANSIT_CIPHERTEXT_MAX = 1024;

function compileTransitForm(form: TransitForm, layout: ValueLayout, kms: KmsForm | undefined): TransitValues {
  if (layout.kind !== 'combined' || layout.encoding !== 'bytea') {
    throw new FormatError('transit: a Transit form shares a bytea column with a combined layout');
  }
  const prefix = Buffer.from(form.prefix, 'hex');
  if (prefix.length === 0 || prefix.length * 2 !== form.prefix.length) {
    throw new FormatError(`transit.prefix '${form.prefix}' must be hex bytes`);
  }
  for (const other of [layout.prefix, kms?.prefix]) {
    if (other !== undefined && other.toLowerCase() === form.prefix.toLowerCase()) {
      throw new FormatError('transit.prefix must differ from value.prefix and kms.prefix: it tells the forms apart');
    }
  }
  const { column } = layout;
  const is = (row: Row) => {
    const value = row[column];
    return Buffer.isBuffer(value) && value.length > prefix.length && value.subarray(0, prefix.length).equals(prefix);
  };
  return {
    is,
    ciphertext(row) {
      if (!is(row)) {
        throw new UnreadableValueError(`${column} is not a Transit ciphertext (no format byte(s) ${form.prefix})`);
      }
      const body = (row[column] as Buffer).subarray(prefix.length);
      if (body.length > TRANSIT_CIPHERTEXT_MAX) throw new UnreadableValueError(`${column} is too long for a DEK`);
      const text = body.toString('latin1');
      if (!TRANSIT_CIPHERTEXT.test(text)) {
        throw new UnreadableValueError(`${column} is not a Transit ciphertext (vault:v<n>:<base64>)`);
      }
      return text;
    },
    version: (ciphertext) => Number(TRANSIT_CIPHERTEXT.exec(ciphertext)?.[1] ?? NaN),
    value: (ciphertext) => Buffer.concat([prefix, Buffer.from(ciphertext, 'latin1')]),
    context(row) {
      const text = row[form.context];
      if (typeof text !== 'string' || text === '') throw new UnreadableValueError(`${form.context} is not text`);
      return Buffer.from(TRANSIT_CONTEXT_LABEL + text, 'utf8').toString('base64');
    },
  };
}
