// A DEK cipher: what a caller may do with one KEK, handed out by the keyring (`keyring.cipher(kekId)`) once the key is
// proved to be the registered one by its fingerprint. Two implementations: LocalCipher over key bytes held in this
// process (the worker's crypto threads, native AES-GCM: src/crypto/row-crypto.ts), and RemoteCipher over a store that
// keeps its KEKs (AWS KMS, Vault Transit): one base, so each remote store says only how to make, open and move a DEK.
// A cipher is released when its unit of work ends: its key bytes are zeroized and every later use is refused.
import { randomBytes } from 'node:crypto';
import type { Codec, Row } from '../codec/sealed-format';
import type { RowCrypto } from '../crypto/row-crypto';
import { kekFingerprint, KEY_BYTES, selfTestKek, unwrapDek, wrapDek } from '../envelope/dek-wrapping';
import type { RewrapRowsOptions, RewrapRowsResult, RowKek } from '../rewrap/rewrap-rows';
import {
  CipherReleasedError,
  ConfigError,
  KekFingerprintMismatchError,
  KeyMaterialError,
  KeyStoreRefusedError,
} from '../errors';

/** A KEK as the rewrap engine takes it, with the registry's fingerprint (a remote KEK's bytes are empty). */
export type EngineKek = RowKek & { fingerprint: string };

export interface DekCipher {
  readonly kekId: string;
  /** The registry's fingerprint of the KEK (for a remote store, the key's ARN or version). */
  readonly fingerprint: string;
  /** The store the KEK is in, for messages. */
  readonly where: string;
  readonly released: boolean;
  /** A new DEK for the tenant (the caller zeroizes `dek`) and its stored form under this KEK. */
  newDek(tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }>;
  /** The DEK the tenant's stored form holds; DekUnwrapError when it does not open under this KEK. */
  open(tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /**
   * The stored form under `target`'s KEK of a DEK stored under this one: inside the store when both KEKs are in the
   * same remote store, else opened here and sealed there. Out of a remote store into key bytes is refused.
   */
  moveTo(target: DekCipher, tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /** The rewrap engine's step for a batch of rows from this KEK to `target`'s (see RowCrypto.rewrap). */
  rewrapRows(
    codec: Codec,
    target: DekCipher,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult>;
  /** For each row, undefined when it opens under this KEK, else why not. Nothing is written. */
  checkRows(codec: Codec, rows: readonly Row[]): Promise<(string | undefined)[]>;
  /** Proves the KEK wraps and opens: a KeyMaterialError naming the KEK and its store when it does not. */
  selfTest(): Promise<void>;
  /** The KEK as the rewrap engine takes it: its bytes stay the cipher's, zeroized on release (none for a remote KEK). */
  rowKek(): EngineKek;
  /**
   * Where rows under this KEK are rewrapped and checked: the worker's crypto threads for key bytes (`local` when the
   * caller runs its own), with the rewrap by column (`rewrapColumns`) they have; the store's paced requests for a KEK
   * that never leaves it.
   */
  rowCrypto(local?: RowCrypto): RowCrypto;
  /** Zeroizes the key bytes it holds; afterwards every use is refused. Idempotent. */
  release(): void;
}

/** The message of a move out of a store whose KEKs never leave it (as before the keyring: refused). */
export const OUT_OF_REMOTE = (store: Pick<RemoteKeyStore, 'product' | 'description'>) =>
  `rekey moves KEKs into ${store.product}, not out of it (${store.description}): rotate to a KEK of that store (to: new), or keep the keyspace's KEKs where they are`;

abstract class BaseCipher {
  private done = false;

  protected constructor(
    readonly kekId: string,
    readonly fingerprint: string,
    readonly where: string,
  ) {}

  get released(): boolean {
    return this.done;
  }

  protected live(): void {
    if (this.done) {
      throw new CipherReleasedError(
        `the cipher of KEK '${this.kekId}' (${this.fingerprint}) was released: its key is zeroized; ask the keyring for a new one`,
      );
    }
  }

  release(): void {
    this.done = true;
    this.zeroize();
  }

  protected abstract zeroize(): void;
}

/**
 * A KEK whose bytes this process holds (env, keyring file, Secrets Manager, Vault KV, Mycelium's token secrets): DEKs
 * are wrapped with rekey's AES-GCM here, rows go through the worker's crypto threads (`rows`).
 */
export class LocalCipher extends BaseCipher implements DekCipher {
  private readonly key: Buffer;

  /**
   * Takes `key` (the caller's copy; zeroized on release, or at once if it is not the key with `fingerprint`). `rows`:
   * the crypto the rewrap engine runs on, asked for only when rows are rewrapped or checked.
   */
  constructor(
    kekId: string,
    fingerprint: string,
    key: Buffer,
    where: string,
    private readonly rows: () => RowCrypto,
  ) {
    super(kekId, fingerprint, where);
    const actual = key.length === KEY_BYTES ? kekFingerprint(key) : `(${key.length} bytes)`;
    if (actual !== fingerprint) {
      key.fill(0);
      throw new KekFingerprintMismatchError(kekId, fingerprint, actual);
    }
    this.key = key;
  }

  /** The KEK as the rewrap engine takes it; the bytes stay this cipher's. */
  rowKek(): EngineKek {
    this.live();
    return { kekId: this.kekId, fingerprint: this.fingerprint, key: this.key };
  }

  rowCrypto(local?: RowCrypto): RowCrypto {
    this.live();
    return local ?? this.rows();
  }

  seal(tenantId: string, dek: Buffer): Buffer {
    this.live();
    return wrapDek(this.key, this.kekId, tenantId, dek);
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- one interface with the remote cipher's requests
  async newDek(tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }> {
    this.live();
    const dek = randomBytes(KEY_BYTES);
    try {
      return { dek, wrapped: this.seal(tenantId, dek) };
    } catch (err) {
      dek.fill(0);
      throw err;
    }
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- one interface with the remote cipher's requests
  async open(tenantId: string, wrapped: Buffer): Promise<Buffer> {
    this.live();
    return unwrapDek(this.key, this.kekId, tenantId, wrapped);
  }

  async moveTo(target: DekCipher, tenantId: string, wrapped: Buffer): Promise<Buffer> {
    this.live();
    const dek = await this.open(tenantId, wrapped);
    try {
      if (target instanceof LocalCipher) return target.seal(tenantId, dek);
      if (target instanceof RemoteCipher) return await target.sealOpened(tenantId, dek);
      throw new TypeError('a DEK moves only between the keyring’s own ciphers');
    } finally {
      dek.fill(0);
    }
  }

  async rewrapRows(
    codec: Codec,
    target: DekCipher,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    if (target instanceof LocalCipher) return this.rows().rewrap(codec, this.rowKek(), target.rowKek(), rows, options);
    if (target instanceof RemoteCipher) return target.importRows(codec, this.rowKek(), rows, options);
    throw new TypeError('rows move only between the keyring’s own ciphers');
  }

  async checkRows(codec: Codec, rows: readonly Row[]): Promise<(string | undefined)[]> {
    return this.rows().check(codec, this.rowKek(), rows);
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- one interface with the remote cipher's requests
  async selfTest(): Promise<void> {
    this.live();
    selfTestKek(this.key, this.kekId, this.where);
  }

  protected zeroize(): void {
    this.key.fill(0);
  }
}

/** A KEK as a remote store knows it: its id and the registry's fingerprint (which names the key there). */
export interface RemoteKek {
  kekId: string;
  fingerprint: string;
}

/**
 * What a store that keeps its KEKs (AWS KMS, Vault Transit) does for a cipher. No key bytes ever reach the worker;
 * plaintext DEKs come back only where the application asks for one (newDek, open) or a DEK moves in from key bytes.
 */
export interface RemoteKeyStore {
  readonly description: string;
  /** The kind of store, as an operator names it: 'AWS KMS', 'Vault Transit'. */
  readonly product: string;
  /** How messages name the store's crypto: 'KMS', 'Transit'. */
  readonly kind: string;
  /** The codec of the store's stored form (rekey's own format), which the self-test checks its probe with. */
  readonly codec: Codec;
  newDek(kek: RemoteKek, tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }>;
  open(kek: RemoteKek, tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /** The stored form under `to` of a DEK under `from`, moved inside the store (KMS ReEncrypt, Transit rewrap). */
  move(from: RemoteKek, to: RemoteKek, tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /** The stored form under `to` of a DEK opened elsewhere (KMS Encrypt); a store that takes none refuses. */
  sealOpened(to: RemoteKek, tenantId: string, dek: Buffer): Promise<Buffer>;
  /** The rewrap engine's crypto inside the store (paced and counted requests). */
  rowCrypto(): RowCrypto;
  /** Rows whose DEKs are under key bytes (`from`), moved under `to` in the store; a store that takes none refuses. */
  importRows(
    codec: Codec,
    from: RowKek,
    to: RemoteKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult>;
  /** A DEK made under `kek` without its plaintext leaving the store, as a row of `codec` (the self-test's probe). */
  probe(kek: RemoteKek, tenantId: string): Promise<Row>;
}

/** A KEK that never leaves its store: every operation is a request to it. */
export class RemoteCipher extends BaseCipher implements DekCipher {
  constructor(
    readonly store: RemoteKeyStore,
    kek: RemoteKek,
  ) {
    super(kek.kekId, kek.fingerprint, store.description);
  }

  private get kek(): RemoteKek {
    this.live();
    return { kekId: this.kekId, fingerprint: this.fingerprint };
  }

  /** The KEK as the rewrap engine takes it: no bytes, its fingerprint names the key in the store. */
  rowKek(): EngineKek {
    return { ...this.kek, key: Buffer.alloc(0) };
  }

  rowCrypto(): RowCrypto {
    this.live();
    return this.store.rowCrypto();
  }

  async newDek(tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }> {
    return this.store.newDek(this.kek, tenantId);
  }

  async open(tenantId: string, wrapped: Buffer): Promise<Buffer> {
    return this.store.open(this.kek, tenantId, wrapped);
  }

  async sealOpened(tenantId: string, dek: Buffer): Promise<Buffer> {
    return this.store.sealOpened(this.kek, tenantId, dek);
  }

  async importRows(
    codec: Codec,
    from: RowKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    return this.store.importRows(codec, from, this.kek, rows, options);
  }

  async moveTo(target: DekCipher, tenantId: string, wrapped: Buffer): Promise<Buffer> {
    const from = this.kek;
    if (target instanceof RemoteCipher && target.store === this.store) {
      return this.store.move(from, target.kek, tenantId, wrapped);
    }
    throw new KeyMaterialError(OUT_OF_REMOTE(this.store), this.where);
  }

  async rewrapRows(
    codec: Codec,
    target: DekCipher,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    const from = this.rowKek();
    if (target instanceof RemoteCipher && target.store === this.store) {
      return this.store.rowCrypto().rewrap(codec, from, target.rowKek(), rows, options);
    }
    throw new ConfigError(OUT_OF_REMOTE(this.store));
  }

  async checkRows(codec: Codec, rows: readonly Row[]): Promise<(string | undefined)[]> {
    return this.store.rowCrypto().check(codec, this.rowKek(), rows);
  }

  /**
   * A DEK made under the KEK without its plaintext, then opened there by the rewrap engine's own check (a move to the
   * same key): the calls a rotation makes, and no plaintext.
   */
  async selfTest(): Promise<void> {
    const probe = await this.store.probe(this.kek, 'rekey-self-test');
    const [reason] = await this.checkRows(this.store.codec, [probe]);
    if (reason !== undefined) {
      throw new KeyMaterialError(`KEK '${this.kekId}' failed its ${this.store.kind} self-test: ${reason}`, this.where);
    }
  }

  protected zeroize(): void {
    // Nothing held: the KEK is in the store.
  }
}

/** A remote store's answer to a DEK that would move into it from key bytes where it takes none. */
export function refusedMoveIn(store: string): KeyStoreRefusedError {
  return new KeyStoreRefusedError(
    `${store} does not take DEKs opened elsewhere: a keyspace moves into it by a rotation to one of its KEKs from a KEK of the same store`,
  );
}

/**
 * The rewrap engine's view of a unit of work's ciphers: each KEK as the engine takes it, and one RowCrypto for all of
 * them. Where every cipher's rows go to the same crypto (key bytes on the worker's threads, or KEKs of one remote
 * store), that crypto itself, with its rewrap by column. Where they do not (KEKs moving from key bytes into KMS), a
 * crypto that sends each KEK's rows where its cipher sends them, and moves rows between two KEKs as the ciphers do
 * (into a remote store by its import; out of one is refused); it has no rewrap by column, so the engine goes by row.
 * `local`: the caller's crypto threads for key bytes. The ciphers stay the caller's to release.
 */
export function engineView(ciphers: readonly DekCipher[], local?: RowCrypto): { keks: EngineKek[]; crypto: RowCrypto } {
  const keks = ciphers.map((cipher) => cipher.rowKek());
  const cryptos = ciphers.map((cipher) => cipher.rowCrypto(local));
  const [first] = cryptos;
  if (first !== undefined && cryptos.every((crypto) => crypto === first)) return { keks, crypto: first };
  const at = (kek: RowKek): number => {
    const i = ciphers.findIndex((cipher) => cipher.kekId === kek.kekId);
    if (i < 0) throw new TypeError(`KEK '${kek.kekId}' is not one of this unit of work's ciphers`);
    return i;
  };
  const threads = cryptos[ciphers.findIndex((cipher) => cipher instanceof LocalCipher)] ?? first;
  return {
    keks,
    crypto: {
      threads: threads?.threads ?? 0,
      rewrap: (codec, from, to, rows, options) => {
        const [f, t] = [at(from), at(to)];
        if (cryptos[f] === cryptos[t]) return cryptos[f]!.rewrap(codec, from, to, rows, options);
        return ciphers[f]!.rewrapRows(codec, ciphers[t]!, rows, options);
      },
      check: (codec, kek, rows) => cryptos[at(kek)]!.check(codec, kek, rows),
      // The worker's threads are the worker's to close; a remote store's crypto holds nothing.
      close: () => Promise.resolve(),
    },
  };
}
