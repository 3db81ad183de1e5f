// The interface the callers not yet moved to the keyring (the dev engine and tenants, `rekey keys` list and import,
// the KMS move-in's DEK operations, the benches) take a store by: every driver of src/keyring/drivers/ still answers
// it, until those callers ask the keyring for a DekCipher instead.
import type { RowCrypto } from '../crypto/row-crypto';
import type { ProvisionOptions } from '../keyring/driver';
import type { HeldKey } from '../keyring/local-keys';

export type GenerateOptions = ProvisionOptions;

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
   * For a store that does the crypto itself (AWS KMS): what the rewrap engine and verification use instead of the
   * worker's crypto threads (`local`, which a store holding some KEKs locally uses for those, made when first used).
   */
  rowCrypto?(local: () => RowCrypto): RowCrypto;
  /** For a store that does the crypto itself: proves the KEK wraps and opens there (else rekey tests its bytes). */
  selfTest?(kek: { kekId: string; fingerprint: string; key: Buffer }): Promise<void>;
  /** For a store that wraps DEKs itself (KMS): the application's DEK operations, in place of wrap and unwrap. */
  readonly deks?: RemoteDeks;
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
  /**
   * Before an empty registry is seeded with `kekId`, the KEK the store's configuration names current (an application's
   * first start): refuses a key that may be another keyspace's (AWS KMS: one whose owner tag does not name `keyspace`,
   * an untagged one included, since another deployment's may share the alias prefix).
   */
  refuseSeed?(kekId: string, keyspace: string): Promise<void>;
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
