// The base of the drivers whose KEKs never leave their store (AWS KMS, Vault Transit): no key bytes in this process,
// a KEK's fingerprint names the key in the store (a KMS key's ARN, a Transit key version with its creation time), and
// every cipher is a RemoteCipher over one RemoteKeyStore per driver, so that two ciphers of the store move DEKs inside
// it. Each store says how it makes, opens and moves a DEK, its rewrap engine's crypto (paced requests), and its probe.
import type { Codec, Row } from '../codec/sealed-format';
import type { PacerLimits } from '../crypto/request-pacer';
import type { RowCrypto } from '../crypto/row-crypto';
import type { RewrapRowsResult } from '../rewrap/rewrap-rows';
import { RemoteCipher, type DekCipher, type RemoteKek, type RemoteKeyStore } from './cipher';
import {
  refuseKeyBytes,
  type DestroyOutcome,
  type ProvisionOptions,
  type RecordedKek,
  type StoreDriver,
  type StoredKek,
} from './driver';
import type { HeldKey } from './local-keys';
import { KekFingerprintMismatchError, KeyMaterialError, TargetConfigError } from '../errors';

/** A whole number from the environment within [min, max], else `fallback`; a KeyMaterialError naming it otherwise. */
export function wholeFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name]?.trim();
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new KeyMaterialError(`${name} must be a whole number from ${min} to ${max}, got '${raw}'`, name);
  }
  return value;
}

/**
 * The pace of a remote store's requests: how many in flight and how many a second (0: unpaced), each a variable with
 * its default and range.
 */
export function pacerLimitsFromEnv(
  env: NodeJS.ProcessEnv,
  limits: { concurrency: [string, number, number, number]; rate: [string, number, number, number] },
): PacerLimits {
  return {
    concurrency: wholeFromEnv(env, ...limits.concurrency),
    ratePerSecond: wholeFromEnv(env, ...limits.rate),
  };
}

/**
 * A store whose KEKs never leave it opens only values in its own form: a target whose format seals values with key
 * bytes is refused when its keys are first opened (the rotation's first step, before anything is written), not at its
 * first rewrap.
 */
export function requireOwnForm(description: string, codec: Codec, target: string): void {
  if (codec.kms !== undefined) return;
  throw new TargetConfigError(
    `target '${target}': its KEKs are in ${description}, which never hands out key bytes, but its format ` +
      `seals values with key bytes (only rekey's own table has a KMS form): give the target keys of its own ` +
      `(keys.provider env or file in the file REKEY_CONFIG names), or run it with another REKEY_KEY_PROVIDER`,
  );
}

export abstract class RemoteKeysDriver implements StoreDriver {
  abstract readonly description: string;
  readonly makesKeks = true;
  /** A key no keyspace records is refused, not adopted: a key rekey makes carries its keyspace (rekey keys generate). */
  readonly ownerAtCreation = true;
  /** The kind of store, as an operator names it: 'AWS KMS', 'Vault Transit'. */
  protected abstract readonly product: string;
  /** How messages name the store's crypto: 'KMS', 'Transit'. */
  protected abstract readonly kind: string;
  /** rekey's own DEK format, whose remote form the store writes. */
  protected abstract readonly codec: Codec;
  /** What the store names current, as `reload` last read it (StoreDriver.configuredCurrent). */
  protected configuredCurrentKekId: string | undefined;
  private remoteStore: RemoteKeyStore | undefined;

  get configuredCurrent(): string | undefined {
    return this.configuredCurrentKekId;
  }

  requireFormat(codec: Codec, target: string): void {
    requireOwnForm(this.description, codec, target);
  }

  whereMissing(): string {
    return this.description;
  }

  /** A store whose keys carry no owner record of their own answers at once (KMS checks its tag). */
  refuseSeed(_kekId: string, _keyspace: string): Promise<void> {
    return Promise.resolve();
  }

  /** Every key the store holds (as last read), with its id and fingerprint. */
  protected abstract held(): HeldKey[];
  abstract reload(): Promise<void>;
  /** Whether the store names a key `kekId` (as last read). */
  protected abstract has(kekId: string): boolean;
  /** The fingerprint of the key the store names `kekId` (as last read); UnknownKekError when it names none. */
  protected abstract fingerprint(kekId: string): string;

  list(): Promise<StoredKek[]> {
    return Promise.resolve(this.held().map(({ kekId, fingerprint }) => ({ kekId: kekId!, fingerprint })));
  }

  protected holds(fingerprint: string): boolean {
    return this.held().some((k) => k.fingerprint === fingerprint);
  }

  /** The KEK's cipher: every operation a request to the store (no key bytes here). */
  cipher(kek: { kekId: string; fingerprint: string }): DekCipher | undefined {
    return this.holds(kek.fingerprint) ? new RemoteCipher(this.remote(), kek) : undefined;
  }

  // ---- What the store does with DEKs (its RemoteKeyStore's requests, each given the id the cipher checked) ----

  /** A new DEK under `kekId`: the plaintext (the caller zeroizes it) and its stored form. */
  abstract newDek(kekId: string, tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }>;
  /** A stored DEK opened; DekUnwrapError when the store refuses it for this tenant and KEK. */
  abstract unwrapDek(kekId: string, tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /** The stored form under `to` of a DEK under `from`, moved inside the store. */
  abstract rewrapDek(from: string, to: string, tenantId: string, wrapped: Buffer): Promise<Buffer>;
  /** The stored form under `to` of a DEK opened elsewhere; a store that takes none refuses. */
  protected abstract sealOpened(to: RemoteKek, tenantId: string, dek: Buffer): Promise<Buffer>;
  /** The rewrap engine's crypto inside the store (paced and counted requests). */
  abstract rowCrypto(): RowCrypto;
  /** Rows whose DEKs are under key bytes, moved into the store (RemoteKeyStore.importRows); one that takes none refuses. */
  protected abstract importRows(...args: Parameters<RemoteKeyStore['importRows']>): Promise<RewrapRowsResult>;
  /** A DEK made under the KEK without its plaintext leaving the store, as a row of rekey's format (the self-test's). */
  protected abstract probe(kek: RemoteKek, tenantId: string): Promise<Row>;

  /** This store as the keyring's remote ciphers use it (one object: two ciphers of it move DEKs inside the store). */
  remote(): RemoteKeyStore {
    // The DEK operations name a KEK by its id, which the store resolves as it last read it (a KMS alias): each is
    // given the id only while it still names the key with the cipher's fingerprint, checked in the same synchronous
    // step as the operation reads it, so that no reload comes between.
    const named = (kek: RemoteKek): string => {
      const now = this.has(kek.kekId) ? this.fingerprint(kek.kekId) : '(no key under that id)';
      if (now !== kek.fingerprint) {
        throw new KekFingerprintMismatchError(
          kek.kekId,
          kek.fingerprint,
          now,
          `KEK '${kek.kekId}' of ${this.description} names ${now} now, not ${kek.fingerprint}, the key its cipher was handed out for: refused (ask the keyring for a new cipher)`,
        );
      }
      return kek.kekId;
    };
    this.remoteStore ??= {
      description: this.description,
      product: this.product,
      kind: this.kind,
      codec: this.codec,
      newDek: (kek, tenantId) => this.newDek(named(kek), tenantId),
      open: (kek, tenantId, wrapped) => this.unwrapDek(named(kek), tenantId, wrapped),
      move: (from, to, tenantId, wrapped) => this.rewrapDek(named(from), named(to), tenantId, wrapped),
      sealOpened: (to, tenantId, dek) =>
        this.sealOpened({ kekId: named(to), fingerprint: to.fingerprint }, tenantId, dek),
      rowCrypto: () => this.rowCrypto(),
      importRows: (...args) => this.importRows(...args),
      probe: (kek, tenantId) => this.probe(kek, tenantId),
    };
    return this.remoteStore;
  }

  /** Takes no key bytes: `rekey keys import` is refused, saying where to import. */
  importKek(_kekId: string, _key: Buffer, _options: { current: boolean }): Promise<'added' | 'present'> {
    return refuseKeyBytes(this.description);
  }

  // ---- The lifecycle, each store's own ----

  /** Makes the KEK in the store (the next key, or key version) and returns its id. Idempotent. */
  protected abstract generate(kekId?: string, options?: ProvisionOptions): Promise<string>;

  async provision(kekId: string, options: ProvisionOptions): Promise<void> {
    await this.generate(kekId, options);
  }

  abstract claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'>;
  abstract ownerOf(kekId: string): Promise<string | undefined>;
  abstract adopt(keyspace: string): Promise<void>;
  abstract claim(provisioning: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract retire(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract restore(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  abstract destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome>;
  abstract close(): void;
}
