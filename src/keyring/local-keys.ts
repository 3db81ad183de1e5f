// Keys held in this process's memory, and the base of every driver whose store hands rekey the key bytes (the
// environment, the keyring file, AWS Secrets Manager, Vault KV): the keys are read into an InMemoryKeys on each
// reload, zeroized when replaced or closed, and used through a LocalCipher the keyring hands out by fingerprint.
import { randomBytes } from 'node:crypto';
import { sharedRowCrypto, type RowCrypto } from '../crypto/row-crypto';
import { KEY_BYTES, kekFingerprint } from '../envelope/dek-wrapping';
import { KEK_ID } from '../rotation/rotation-input';
import { LocalCipher, type DekCipher } from './cipher';
import type { DestroyOutcome, ProvisionOptions, RecordedKek, StoreDriver, StoredKek } from './driver';
import {
  KekFingerprintMismatchError,
  KeyMaterialError,
  KeyStoreRefusedError,
  OperatorMustActError,
  UnknownKekError,
} from '../errors';

export const KEK_ID_PATTERN = KEK_ID;

/** One key held, by the id its store gives it (none for a key the store does not name). */
export interface HeldKey {
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

/** The id after every `vN` of `existing`: v1, v2, ... */
export function nextKekId(existing: string[]): string {
  const numbers = existing.map((id) => /^v(\d+)$/.exec(id)?.[1]).filter((n): n is string => n !== undefined);
  const highest = numbers.reduce((max, n) => Math.max(max, Number(n)), 0);
  return `v${highest + 1}`;
}

/** The id of a new KEK: `kekId` (checked), else the next vN after `existing`. */
export function newKekId(kekId: string | undefined, existing: string[], source: string): string {
  const id = kekId ?? nextKekId(existing);
  if (!KEK_ID_PATTERN.test(id)) {
    throw new KeyMaterialError(`KEK id '${id}' must be 1-64 letters, digits, '_', '.' or '-'`, source);
  }
  return id;
}

/** A new random KEK as rekey stores it (base64url, unpadded); its bytes are zeroized once written out as text. */
export function newKekText(): string {
  const key = randomBytes(KEY_BYTES);
  const text = key.toString('base64url');
  key.fill(0);
  return text;
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

/**
 * A driver whose keys are loaded into this process's memory; subclasses say where from (`load`) and how their store
 * carries out each step of the lifecycle. `rows`: the crypto a LocalCipher rewraps and checks rows on (the worker's
 * threads, made when first used).
 */
export abstract class LocalKeysDriver implements StoreDriver {
  abstract readonly description: string;
  abstract readonly makesKeks: boolean;
  /** A store of key bytes records its owner when a keyspace adopts it. */
  readonly ownerAtCreation = false;
  /** What the store's configuration names current, as `load` last read it (StoreDriver.configuredCurrent). */
  protected configuredCurrentKekId: string | undefined;
  rows: () => RowCrypto = sharedRowCrypto;
  protected readonly keys: InMemoryKeys;

  protected constructor(where: string) {
    this.keys = new InMemoryKeys(where);
  }

  /** Reads every KEK from the source; sets configuredCurrentKekId. */
  protected abstract load(): InMemoryKeys | Promise<InMemoryKeys>;

  get configuredCurrent(): string | undefined {
    return this.configuredCurrentKekId;
  }

  async reload(): Promise<void> {
    this.keys.replaceWith(await this.load());
  }

  list(): Promise<StoredKek[]> {
    return Promise.resolve(this.keys.held().map(({ kekId, fingerprint }) => ({ kekId: kekId!, fingerprint })));
  }

  cipher(kek: { kekId: string; fingerprint: string }): DekCipher | undefined {
    const key = this.keys.copyByFingerprint(kek.fingerprint);
    return key && new LocalCipher(kek.kekId, kek.fingerprint, key, this.description, this.rows);
  }

  /** Key bytes open every format. */
  requireFormat(): void {}

  whereMissing(): string {
    return this.description;
  }

  /** A key this store holds under the configured name is the keyspace's by the store's own record (the owner rule). */
  refuseSeed(_kekId: string, _keyspace: string): Promise<void> {
    return Promise.resolve();
  }

  abstract ownerOf(kekId: string): Promise<string | undefined>;
  abstract adopt(keyspace: string): Promise<void>;
  abstract provision(kekId: string, options: ProvisionOptions): Promise<void>;
  abstract claim(provisioning: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract retire(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract restore(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome>;
  abstract importKek(kekId: string, key: Buffer, options: { current: boolean }): Promise<'added' | 'present'>;
  abstract claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'>;

  /**
   * The restore of a store whose retire leaves the key readable (the keyring file, Secrets Manager): nothing to undo
   * while it holds the registered key; one it no longer holds only the operator can put back.
   */
  protected requireHeldForRestore(kekId: string, registry: readonly RecordedKek[]): void {
    const recorded = registry.find((k) => k.kekId === kekId);
    if (recorded !== undefined && !this.keys.held().some((k) => k.fingerprint === recorded.fingerprint)) {
      throw new OperatorMustActError(
        this.description,
        `put KEK '${kekId}' back into ${this.description}, the key the registry recorded`,
      );
    }
  }

  // ---- What a store of versions (Secrets Manager, Vault KV) proves before it moves a name or destroys a version ----

  /** The key this store holds under `kekId` is the one the registry recorded for it (if it recorded one). */
  protected requireRecordedKey(kekId: string, registry: readonly RecordedKek[]): void {
    const recorded = registry.find((kek) => kek.kekId === kekId);
    if (recorded !== undefined && recorded.fingerprint !== this.fingerprint(kekId)) {
      throw new KekFingerprintMismatchError(kekId, recorded.fingerprint, this.fingerprint(kekId));
    }
  }

  /**
   * The registry's record of the key a version without a rekey name holds (read as `kekId`): the name to give it, or
   * undefined when the registry does not record that key (or has destroyed it), or its name is another version's
   * already (`named`), which the keyring then refuses by fingerprint.
   */
  protected recordOfUnnamed(
    kekId: string,
    registry: readonly RecordedKek[],
    named: (kekId: string) => boolean,
  ): RecordedKek | undefined {
    const fingerprint = this.fingerprint(kekId);
    const record = registry.find((kek) => kek.fingerprint === fingerprint && kek.state !== 'destroyed');
    if (!record || (record.kekId !== kekId && named(record.kekId))) return undefined;
    return record;
  }

  /** Before `where` (KEK `kekId`, holding `fingerprint`) is destroyed: no other KEK the registry still needs is that key. */
  protected refuseSharedKey(where: string, kekId: string, fingerprint: string, registry: readonly RecordedKek[]): void {
    const other = registry.find(
      (kek) => kek.kekId !== kekId && kek.fingerprint === fingerprint && kek.state !== 'destroyed',
    );
    if (other) {
      throw new KeyStoreRefusedError(
        `${where} (KEK '${kekId}') holds the same key as KEK '${other.kekId}', which is ${other.state}: not destroyed`,
      );
    }
  }

  close(): void {
    this.keys.clear();
  }

  // ---- What the driver read, by the store's own names (as of the last reload): its hooks' checks ----

  protected kekIds(): string[] {
    return this.keys.ids();
  }
  protected has(kekId: string): boolean {
    return this.keys.has(kekId);
  }
  protected fingerprint(kekId: string): string {
    return this.keys.fingerprint(kekId);
  }
}
