import { randomBytes } from 'node:crypto';
import { KEY_BYTES, kekFingerprint, unwrapDek, wrapDekInto, WRAPPED_DEK_BYTES } from '../envelope/dek-wrapping';
import { KEK_ID } from '../rotation/rotation-input';
import type { RowCrypto } from '../crypto/row-crypto';
import type { KekState } from '../envelope/kek-lifecycle';
import { KeyMaterialError, UnknownKekError } from '../errors';

export const KEK_ID_PATTERN = KEK_ID;

export interface GenerateOptions {
  /** An earlier attempt of this provision may have created the KEK (a retried activity). */
  retry?: boolean;
  /** Epoch ms: a retry stops looking for the earlier attempt's KEK then and creates one, so that the step ends. */
  searchUntil?: number;
  /** The keyspace (`<database id>/<schema.table>`) the new KEK belongs to, recorded in the store where it can be. */
  owner?: string;
}

/**
 * A store's own record of which keyspace each of its KEKs belongs to (finding 1: a key store belongs to one keyspace):
 * the keyring file records it per KEK, AWS Secrets Manager as the secret's tag `rekey:keyspace`, AWS KMS as each key's
 * tag. Before a KEK is retired, disabled or destroyed in its store, rekey checks that the record names the keyspace
 * asking.
 */
export interface KeyOwners {
  /** The keyspace the store records for a KEK; undefined when it records none. */
  ownerOf(kekId: string): Promise<string | undefined>;
  /**
   * Records `keyspace` as the owner of every KEK of the store that records none yet (a store written before owners
   * existed is adopted by the first keyspace that uses it), durably, before anything else happens. Idempotent.
   */
  adopt(keyspace: string): Promise<void>;
}

/**
 * A KEK as its keyspace's registry records it. A store's lifecycle steps are given the registry's records, and act on
 * the key with the recorded fingerprint (a KMS key's ARN), never on whatever a name (an alias, a label) names now.
 */
export interface RecordedKek {
  kekId: string;
  fingerprint: string;
  state: KekState;
}

/** Where KEKs come from. Key bytes stay inside the provider; callers name KEKs by id only. */
export interface KeyProvider {
  /** e.g. `env (prefix TALOS)` or `file /path/keyring.json`, for messages. */
  readonly description: string;
  /** The KEK the configuration names as current; it seeds the registry's first active KEK. */
  readonly configuredCurrentKekId: string | undefined;
  kekIds(): string[];
  has(kekId: string): boolean;
  fingerprint(kekId: string): string;
  wrap(kekId: string, tenantId: string, dek: Buffer): Buffer;
  /** Batch form for the rewrap engine: writes the wrapped DEK into `out` at `offset`. */
  wrapInto(out: Buffer, offset: number, kekId: string, tenantId: string, dek: Buffer, nonce: Buffer): void;
  unwrap(kekId: string, tenantId: string, wrapped: Buffer): Buffer;
  /** Re-reads the source, so a KEK added by another process becomes usable without a restart. */
  reload(): Promise<void>;
  /**
   * Creates a new KEK and returns its id, where the provider can (`undefined` when it cannot). `retry`: an earlier
   * attempt of the same provision may have created it before its answer was lost (a store without idempotent
   * creation looks for it first).
   */
  generate?(kekId?: string, options?: GenerateOptions): Promise<string>;
  /**
   * Before a provision writes anything: proves that the store's names for this keyspace are the ones its registry
   * (`registry`) recorded, refusing a store another deployment uses (KMS), and gives a key the store holds without a
   * name of rekey's its name (Secrets Manager's hand-made AWSCURRENT version). `provisioning` is the KEK to be made.
   */
  claim?(provisioning: string, registry: readonly RecordedKek[]): Promise<void>;
  /**
   * For a store that marks its current key itself (Secrets Manager's AWSCURRENT): marks `to` current and `from` the
   * previous one, after the registry promoted `to`. Idempotent.
   */
  promote?(from: string, to: string, registry: readonly RecordedKek[]): Promise<void>;
  /** Marks a KEK retired in the store, keeping its material for the restore window. Idempotent. */
  retire?(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  /** Undoes `retire` in the store (the registry restored the KEK to decrypt-only). Idempotent. */
  restore?(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  /**
   * The store's `retire` makes the key unreadable (Vault KV's soft delete): a restore calls `restore` first, which
   * makes it readable and proves it is the registered key, before the registry restores the KEK.
   */
  readonly restoresUnreadable?: boolean;
  /**
   * Destroys a retired KEK's material where the store can; says what it did, or what the operator must do where it
   * cannot (the environment). Idempotent: a KEK already gone is destroyed.
   */
  destroy?(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome>;
  /**
   * For a store that does the crypto itself (AWS KMS): what the rewrap engine and verification use instead of the
   * worker's crypto threads (`local`, which a store holding some KEKs locally uses for those, made when first used).
   */
  rowCrypto?(local: () => RowCrypto): RowCrypto;
  /** For a store that does the crypto itself: proves the KEK wraps and opens there (else rekey tests its bytes). */
  selfTest?(kek: { kekId: string; fingerprint: string; key: Buffer }): Promise<void>;
  /** For a store that wraps DEKs itself (KMS): the application's DEK operations, in place of wrap and unwrap. */
  readonly deks?: RemoteDeks;
  /** Where the store can record which keyspace each KEK belongs to (not the environment, nor Mycelium's secrets). */
  readonly owners?: KeyOwners;
  /** Zeroizes every key held in memory. */
  close(): void;
  /** Every key held, by fingerprint, with the id the source gives it. */
  held(): HeldKey[];
  /** A copy of the key with this fingerprint, if held; the caller zeroizes it when done. */
  copyByFingerprint(fingerprint: string): Buffer | undefined;
  /**
   * For a source that does not name its keys (Mycelium's old and current token_secret): the ids a rotation gives
   * them, `from` for the old key and `to` for the current one.
   */
  bindRotation?(from: string, to: string): void;
}

/** DEK operations done by the key store: plaintext DEKs are returned to the caller, who zeroizes them. */
export interface RemoteDeks {
  /** A new DEK and its stored form under `kekId` (KMS: GenerateDataKey). */
  newDek(kekId: string, tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }>;
  /** KMS: Decrypt. */
  unwrapDek(kekId: string, tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /** The stored form under `to` of a DEK stored under `from`, with no plaintext leaving the store (KMS: ReEncrypt). */
  rewrapDek(from: string, to: string, tenantId: string, wrapped: Buffer): Promise<Buffer>;
}

export interface DestroyOutcome {
  /** The store no longer holds the material (or holds it where only its own deletion process removes it). */
  destroyed: boolean;
  /** What was done, or what the operator must do. */
  detail: string;
}

export interface HeldKey {
  /** Undefined for a key the source does not name and no rotation has named yet. */
  kekId?: string;
  fingerprint: string;
}

/** Keys held in this process's memory: the env and file providers load into one of these. */
export class InMemoryKeys {
  private readonly keys = new Map<string, { key: Buffer; fingerprint: string }>();

  constructor(private readonly where: string) {}

  add(kekId: string, key: Buffer, source: string): void {
    if (!KEK_ID_PATTERN.test(kekId)) {
      throw new KeyMaterialError(
        `${source}: KEK id '${kekId}' must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit`,
        source,
      );
    }
    if (key.length !== KEY_BYTES) {
      throw new KeyMaterialError(`${source}: a KEK is ${KEY_BYTES} bytes, got ${key.length}`, source);
    }
    this.keys.get(kekId)?.key.fill(0);
    this.keys.set(kekId, { key, fingerprint: kekFingerprint(key) });
  }

  ids(): string[] {
    return [...this.keys.keys()].sort();
  }

  has(kekId: string): boolean {
    return this.keys.has(kekId);
  }

  fingerprint(kekId: string): string {
    return this.entry(kekId).fingerprint;
  }

  wrap(kekId: string, tenantId: string, dek: Buffer): Buffer {
    const out = Buffer.allocUnsafe(WRAPPED_DEK_BYTES);
    this.wrapInto(out, 0, kekId, tenantId, dek, randomBytes(12));
    return out;
  }

  wrapInto(out: Buffer, offset: number, kekId: string, tenantId: string, dek: Buffer, nonce: Buffer): void {
    wrapDekInto(out, offset, this.entry(kekId).key, kekId, tenantId, dek, nonce);
  }

  unwrap(kekId: string, tenantId: string, wrapped: Buffer): Buffer {
    return unwrapDek(this.entry(kekId).key, kekId, tenantId, wrapped);
  }

  held(): HeldKey[] {
    return [...this.keys].map(([kekId, { fingerprint }]) => ({ kekId, fingerprint }));
  }

  copyByFingerprint(fingerprint: string): Buffer | undefined {
    for (const entry of this.keys.values()) if (entry.fingerprint === fingerprint) return Buffer.from(entry.key);
    return undefined;
  }

  /** Replaces the whole set (reload); old buffers are zeroized. */
  replaceWith(other: InMemoryKeys): void {
    this.clear();
    for (const [id, entry] of other.keys) this.keys.set(id, entry);
    other.keys.clear();
  }

  clear(): void {
    for (const { key } of this.keys.values()) key.fill(0);
    this.keys.clear();
  }

  private entry(kekId: string) {
    const entry = this.keys.get(kekId);
    if (!entry) throw new UnknownKekError(kekId, this.where);
    return entry;
  }
}

const BASE64URL_32_BYTES = /^[A-Za-z0-9_-]{43}$/;

/** Decodes a 32-byte key written as base64url without padding; the message says exactly what is wrong. */
export function decodeKek(value: string, source: string): Buffer {
  const trimmed = value.trim();
  let problem: string | undefined;
  if (trimmed.length === 0) problem = 'it is empty';
  else if (/[+/]/.test(trimmed))
    problem = "it is standard base64: use base64url (replace '+' with '-' and '/' with '_')";
  else if (trimmed.endsWith('=')) problem = "remove the '=' padding";
  else if (!/^[A-Za-z0-9_-]+$/.test(trimmed)) problem = 'it contains characters outside the base64url alphabet';
  else if (!BASE64URL_32_BYTES.test(trimmed)) {
    problem = `it decodes to ${Buffer.from(trimmed, 'base64url').length} bytes (${trimmed.length} characters), not 32 bytes (43 characters)`;
  }
  if (problem) {
    throw new KeyMaterialError(
      `${source} must hold 32 random bytes as base64url without padding (openssl rand -base64 32 | tr '+/' '-_' | tr -d '='): ${problem}`,
      source,
    );
  }
  return Buffer.from(trimmed, 'base64url');
}

/** A provider whose keys are loaded into this process's memory; subclasses say where from. */
export abstract class LocalKeyProvider implements KeyProvider {
  abstract readonly description: string;
  configuredCurrentKekId: string | undefined;
  protected readonly keys: InMemoryKeys;

  protected constructor(where: string) {
    this.keys = new InMemoryKeys(where);
  }

  /** Reads every KEK from the source; sets configuredCurrentKekId. */
  protected abstract load(): InMemoryKeys | Promise<InMemoryKeys>;

  kekIds(): string[] {
    return this.keys.ids();
  }
  has(kekId: string): boolean {
    return this.keys.has(kekId);
  }
  fingerprint(kekId: string): string {
    return this.keys.fingerprint(kekId);
  }
  wrap(kekId: string, tenantId: string, dek: Buffer): Buffer {
    return this.keys.wrap(kekId, tenantId, dek);
  }
  wrapInto(out: Buffer, offset: number, kekId: string, tenantId: string, dek: Buffer, nonce: Buffer): void {
    this.keys.wrapInto(out, offset, kekId, tenantId, dek, nonce);
  }
  unwrap(kekId: string, tenantId: string, wrapped: Buffer): Buffer {
    return this.keys.unwrap(kekId, tenantId, wrapped);
  }
  async reload(): Promise<void> {
    this.keys.replaceWith(await this.load());
  }
  close(): void {
    this.keys.clear();
  }
  held(): HeldKey[] {
    return this.keys.held();
  }
  copyByFingerprint(fingerprint: string): Buffer | undefined {
    return this.keys.copyByFingerprint(fingerprint);
  }
}
