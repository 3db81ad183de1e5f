// The seam between rekey and a key store: what one store does, and nothing else. A driver holds keys (or names them,
// where they never leave the store) and carries out one step of a KEK's lifecycle when the keyring asks; the keyring
// (keyring.ts) decides whether a step may happen, records it in the registry first, and only then calls the hook.
// Every hook is required: a store that cannot do a step answers what the operator must do instead (OperatorMustActError
// with the exact instruction) or a typed refusal (refuseClaim, refuseKeyBytes), and the few facts a caller needs before
// a step (makesKeks, ownerAtCreation) are required members, so no caller probes a store for optional members.
import type { Codec } from '../codec/sealed-format';
import type { KekState } from '../envelope/kek-lifecycle';
import type { DekCipher } from './cipher';
import { ConfigError } from '../errors';

/**
 * A KEK as its keyspace's registry records it. A driver's lifecycle hooks are given the registry's records, and act
 * on the key with the recorded fingerprint (a KMS key's ARN), never on whatever a name (an alias, a label) names now.
 */
export interface RecordedKek {
  kekId: string;
  fingerprint: string;
  state: KekState;
}

/** One key a store holds, as the store knows it. */
export interface StoredKek {
  /** The id the store gives it; absent for a key the store does not name (Mycelium's old and current token_secret). */
  kekId?: string;
  fingerprint: string;
  /** For a key the store does not name: its place, which the keyring names for the rotation under way. */
  slot?: 'old' | 'current';
}

export interface ProvisionOptions {
  /**
   * The keyspace (`<database id>/<schema.table>`) the new KEK belongs to, recorded in the store where it can be.
   * Absent for a KEK made outside any keyspace (`rekey keys generate`): the first keyspace that uses it adopts it.
   */
  owner?: string;
  /** An earlier attempt of this provision may have created the KEK (a retried activity). */
  retry?: boolean;
  /** Epoch ms: a retry stops looking for the earlier attempt's KEK then and creates one, so that the step ends. */
  searchUntil?: number;
}

export interface DestroyOutcome {
  /** The store no longer holds the material (or holds it where only its own deletion process removes it). */
  destroyed: boolean;
  /** What was done, or what the operator must do. */
  detail: string;
}

export interface StoreDriver {
  /** e.g. `environment variables TALOS_KEK_<id>` or `file /path/keyring.json`, for messages. */
  readonly description: string;
  /** The KEK the store's configuration names as current (it seeds the registry's first active KEK), if any. */
  readonly configuredCurrent: string | undefined;
  /**
   * Whether `provision` makes a new KEK in the store; false for a store rekey only reads (the environment, Mycelium's
   * token secrets), whose provision answers what the operator must add. Read before a rotation to a new KEK begins.
   */
  readonly makesKeks: boolean;
  /**
   * Refuses (TargetConfigError, naming `target` and what to change) a target whose stored form this store cannot open:
   * a store whose KEKs never leave it opens only values in its own form. Asked when the target's keys are first
   * opened, before anything is written; a store that hands out key bytes opens every format and answers at once.
   */
  requireFormat(codec: Codec, target: string): void;
  /**
   * Where a KEK the store does not hold is missing from, for the message that says so (UnknownKekError): the store's
   * description, and for a store that does not name its keys, what to set for the key in `slot` (its place, as the
   * rotation under way names it; undefined when no rotation names the KEK).
   */
  whereMissing(slot: 'old' | 'current' | undefined): string;
  /** Re-reads the store, so that a KEK added by another process becomes usable without a restart. */
  reload(): Promise<void>;
  /** Every key the store holds, with its fingerprint (as of the last reload). */
  list(): Promise<StoredKek[]>;
  /**
   * The keyspace the store records as the owner of `kekId` (the keyring file's `owner`, the tag `rekey:keyspace` of a
   * Secrets Manager secret or a KMS key, Vault KV's custom_metadata); undefined where it records none or cannot. Asked
   * per KEK, read fresh: one request to a remote store, whatever the number of keys it holds.
   */
  ownerOf(kekId: string): Promise<string | undefined>;
  /**
   * Records `keyspace` as the owner of every KEK of the store that records none yet (a store written before owner
   * records is adopted by the first keyspace that uses it), durably. Idempotent. A store that records no owners
   * answers OperatorMustActError. `registry`: the keyspace's records; a store that cannot tell its own keys from another
   * deployment's by a record (KMS keys under a shared alias prefix) takes only those the registry recorded.
   */
  adopt(keyspace: string, registry?: readonly RecordedKek[]): Promise<void>;
  /** Creates the KEK `kekId` in the store, recording `options.owner`. Idempotent. */
  provision(kekId: string, options: ProvisionOptions): Promise<void>;
  /**
   * Before a provision writes anything: proves that the store's names for this keyspace are the ones its registry
   * recorded (refusing a store another deployment uses) and gives a key it holds without a name of rekey's its name.
   */
  claim(provisioning: string, registry: readonly RecordedKek[]): Promise<void>;
  /** Marks `to` the store's current KEK and `from` the previous one, after the registry promoted `to`. Idempotent. */
  promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void>;
  /** Marks a KEK retired in the store, keeping its material for the restore window. Idempotent. */
  retire(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  /** Undoes `retire`: afterwards the store holds the registered key, readable. Idempotent. */
  restore(kekId: string, registry: readonly RecordedKek[]): Promise<void>;
  /** Destroys a retired KEK's material; says what it did. Idempotent: a KEK already gone is destroyed. */
  destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome>;
  /**
   * The DEK cipher of the key with this fingerprint (the keyring has checked it against the registry), used under the
   * id `kekId`. Undefined when the store does not hold it.
   */
  cipher(kek: { kekId: string; fingerprint: string }): DekCipher | undefined;
  /**
   * Whether a KEK made here must carry its keyspace from creation (AWS KMS, Vault Transit: a key no keyspace records is
   * refused, not adopted), so that `rekey keys generate` asks for the target's keyspace first.
   */
  readonly ownerAtCreation: boolean;
  /**
   * `rekey keys claim`: records `keyspace` as the owner of KEK `kekId`, the key with `fingerprint` (as `rekey keys list`
   * prints it), an explicit act on one key; 'already' when it was this keyspace's. Another keyspace's key is refused
   * (KeyspaceMismatchError); a store that records no owners refuses (refuseClaim).
   */
  claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'>;
  /**
   * `rekey keys import`: writes a KEK's bytes under `kekId` unless the store holds them there already ('present');
   * `current`: the store names it current if it names none yet. A different key under the id is refused. A store that
   * takes no key bytes refuses (refuseKeyBytes), before anything is written.
   */
  importKek(kekId: string, key: Buffer, options: { current: boolean }): Promise<'added' | 'present'>;
  /** Zeroizes every key held in memory and closes connections. */
  close(): void;
  /**
   * Before an empty registry is seeded with `kekId`, the KEK the store's configuration names current (an application's
   * first start): refuses a key that may be another keyspace's (AWS KMS: one whose owner tag does not name `keyspace`,
   * an untagged one included, since another deployment's may share the alias prefix). The keyring file, whose KEKs only
   * rekey makes, records `keyspace` as the owner of a KEK it records none for, before the seed (a second deployment on
   * the same file is then refused). A store that records no owners answers at once.
   */
  refuseSeed(kekId: string, keyspace: string): Promise<void>;
}

/** The answer of a store that takes no key bytes to `rekey keys import` (exit 2): where keys can be imported. */
export function refuseKeyBytes(store: string): Promise<never> {
  return Promise.reject(
    new ConfigError(
      `${store} cannot be given key bytes: import into a keyring file (--keyring <file>) or an AWS Secrets Manager secret (REKEY_KEY_PROVIDER=aws-secrets-manager, REKEY_AWS_SECRET_ID)`,
    ),
  );
}

/** The answer of a store without owner records (the environment, Mycelium's token secrets) to `rekey keys claim` (exit 2). */
export function refuseClaim(store: string): Promise<never> {
  return Promise.reject(
    new ConfigError(
      `${store} records no owners: nothing to claim (rekey keys claim is for the stores that record their keys' owners: a keyring file, AWS KMS, Vault Transit, Vault KV and Secrets Manager)`,
    ),
  );
}

/** One key store a target's KEKs come from, as targets are compared: `key` compares, `what` names it in messages. */
export interface StoreName {
  key: string;
  what: string;
}

/** What a process's store is opened with. */
export interface ProcessStoreContext {
  env: NodeJS.ProcessEnv;
  /** REKEY_KEYRING_FILE (or --keyring), for a store that reads a keyring file. */
  keyringFile: string | undefined;
  /** Hears each request made to a remote store (AWS KMS, Vault). */
  onRequest?: (operation: string, outcome: 'ok' | 'error') => void;
}

/**
 * A store a process can be configured with (REKEY_KEY_PROVIDER=`value`): everything rekey knows of it outside its
 * driver, exported by the driver's module and listed once in stores.ts.
 */
export interface ProcessStore<Value extends string = string> {
  /** REKEY_KEY_PROVIDER's value for this store. */
  readonly value: Value;
  /**
   * How `auto` detects it (stores are asked by `order`, lowest first): `why` says which variable of `variables` points
   * at it, or undefined; the store without `why` is the fallback, picked when no other is pointed at.
   */
  readonly auto?: { order: number; variables: readonly string[]; why?: (env: NodeJS.ProcessEnv) => string | undefined };
  /**
   * The driver, from the store's settings in the environment, checked at once (a KeyMaterialError naming the variable
   * to fix). A remote store is read on the driver's first `reload`.
   */
  open(context: ProcessStoreContext): StoreDriver;
  /** The stores it reads, as far as the environment names them (two targets must not share one). */
  reads(env: NodeJS.ProcessEnv): StoreName[];
}
