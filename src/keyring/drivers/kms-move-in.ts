// KEKs moving into AWS KMS: a driver over two drivers, the KMS one (where new KEKs are made) and the local one (the
// environment or a keyring file: where KEKs move out of). A deployment of rekey's own table whose KEKs are held locally (the environment or a
// keyring file) cannot switch to KMS keys at once: every row is still wrapped by a local KEK. With
// REKEY_AWS_KMS_LOCAL_KEYS the process holds both: the local KEKs, to read rows (and, until the rotation promotes a
// KMS key, wrap new ones), and the KMS keys, where new KEKs are made. An ordinary rotation from the local KEK to a new
// one then moves every DEK into KMS (Encrypt), while the application reads each row with whichever KEK its label
// names; later rotations are between KMS keys (ReEncrypt) and never see a plaintext DEK.
import type { Codec } from '../../codec/sealed-format';
import { keyArnOf, KmsKeys } from './aws-kms';
import { EnvKeyProvider, envStore } from './env';
import { FileKeyring, fileStore, keyringFileOf } from './file';
import type { DekCipher } from '../cipher';
import {
  refuseKeyBytes,
  type DestroyOutcome,
  type ProcessStore,
  type ProvisionOptions,
  type RecordedKek,
  type StoreDriver,
  type StoredKek,
} from '../driver';
import type { LocalKeysDriver } from '../local-keys';
import { requireOwnForm } from '../remote-keys';
import { KeyMaterialError, OperatorMustActError } from '../../errors';

export class KmsWithLocalKeys implements StoreDriver {
  readonly description: string;
  /** New KEKs are made in KMS. */
  readonly makesKeks = true;
  /** New KEKs are KMS keys, which carry their keyspace from creation. */
  readonly ownerAtCreation = true;

  constructor(
    readonly kms: KmsKeys,
    readonly local: LocalKeysDriver,
  ) {
    this.description = `${kms.description}, with KEKs moving in from ${local.description}`;
  }

  /** The KMS `current` alias once there is one; until then, what the local source names. */
  get configuredCurrent(): string | undefined {
    return this.kms.configuredCurrent ?? this.local.configuredCurrent;
  }

  /** The store that holds `kekId` (as last read): KMS for its keys, the local source for the rest. */
  private async of(kekId: string): Promise<KmsKeys | LocalKeysDriver> {
    return (await this.kms.list()).some((k) => k.kekId === kekId) ? this.kms : this.local;
  }

  async list(): Promise<StoredKek[]> {
    return [...(await this.kms.list()), ...(await this.local.list())];
  }

  /** A KMS key's cipher asks KMS; a local KEK's is its own store's, over its bytes. */
  cipher(kek: { kekId: string; fingerprint: string }): DekCipher | undefined {
    return keyArnOf(kek.fingerprint) !== undefined ? this.kms.cipher(kek) : this.local.cipher(kek);
  }

  /** Takes no key bytes: `rekey keys import` is refused, saying where to import. */
  importKek(_kekId: string, _key: Buffer, _options: { current: boolean }): Promise<'added' | 'present'> {
    return refuseKeyBytes(this.description);
  }

  /** Values in KMS's form only, as the KMS store (every KEK ends there). */
  requireFormat(codec: Codec, target: string): void {
    requireOwnForm(this.description, codec, target);
  }

  whereMissing(): string {
    return this.description;
  }

  /** Each KEK's owner as its own store records it (the environment records none). */
  async ownerOf(kekId: string): Promise<string | undefined> {
    return (await this.of(kekId)).ownerOf(kekId);
  }

  async adopt(keyspace: string, registry: readonly RecordedKek[] = []): Promise<void> {
    await this.kms.adopt(keyspace, registry);
    await this.local.adopt(keyspace).catch(readOnlyIsDone);
  }

  /**
   * A KMS key seeds an empty registry only when its owner tag names the keyspace; a local key as its store says (a
   * keyring file refuses one it records as another keyspace's; the environment records no owner).
   */
  async refuseSeed(kekId: string, keyspace: string): Promise<void> {
    await (await this.of(kekId)).refuseSeed(kekId, keyspace);
  }

  async reload(): Promise<void> {
    await Promise.all([this.kms.reload(), this.local.reload()]);
    const local = new Set((await this.local.list()).map((k) => k.kekId));
    const both = (await this.kms.list())
      .map((k) => k.kekId!)
      .filter((kekId) => local.has(kekId))
      .sort();
    if (both.length > 0) {
      throw new KeyMaterialError(
        `KEK id(s) ${both.map((id) => `'${id}'`).join(', ')} name both a KMS key (${this.kms.description}) and a key in ${this.local.description}: a KEK id names one key; remove the local one once no row uses it`,
        this.description,
      );
    }
  }

  // ---- Lifecycle: new KEKs are KMS keys; each KEK's own store retires, restores and destroys it ----

  /** The store that holds the key the registry recorded for `kekId`: KMS for a key ARN, the local source for bytes. */
  private async recordedIn(kekId: string, registry: readonly RecordedKek[]): Promise<KmsKeys | LocalKeysDriver> {
    const recorded = registry.find((kek) => kek.kekId === kekId);
    if (recorded === undefined) return this.of(kekId);
    return keyArnOf(recorded.fingerprint) === undefined ? this.local : this.kms;
  }

  /** A KMS key is claimed in KMS; a local one moving out is the keyspace's by its registry. */
  claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'> {
    return this.kms.claimKey(kekId, fingerprint, keyspace);
  }

  /** New KEKs are made in KMS: its prefix must be this keyspace's. */
  claim(provisioning: string, registry: readonly RecordedKek[]): Promise<void> {
    return this.kms.claim(provisioning, registry);
  }

  async provision(kekId: string, options: ProvisionOptions): Promise<void> {
    await this.kms.provision(kekId, options);
  }

  /** A local KEK keeps no mark in its store while it moves out: the registry's is the record. */
  async promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void> {
    await (await this.recordedIn(to, registry)).promote(from, to, registry).catch(readOnlyIsDone);
  }

  async retire(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    await (await this.recordedIn(kekId, registry)).retire(kekId, registry).catch(readOnlyIsDone);
  }

  /** KMS enables its key again; a local KEK left readable by retire must still be held. */
  async restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    const store = await this.recordedIn(kekId, registry);
    if (store === this.kms) return this.kms.restore(kekId, registry);
    const recorded = registry.find((k) => k.kekId === kekId);
    const held = await this.local.list();
    if (recorded !== undefined && !held.some((k) => k.fingerprint === recorded.fingerprint)) {
      throw new OperatorMustActError(
        this.description,
        `put KEK '${kekId}' back into ${this.description}, the key the registry recorded`,
      );
    }
  }

  /** Destroyed by the store that holds the key the registry recorded: KMS for a key ARN, else the local source. */
  async destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    return (await this.recordedIn(kekId, registry)).destroy(kekId, registry);
  }

  close(): void {
    this.kms.close();
    this.local.close();
  }
}

/** A step a read-only local store leaves to the operator is, while its KEKs move out, one with nothing to do. */
function readOnlyIsDone(err: unknown): void {
  if (!(err instanceof OperatorMustActError)) throw err;
}

/**
 * REKEY_KEY_PROVIDER=aws-kms: the KMS keys under REKEY_AWS_KMS_ALIAS_PREFIX, and with REKEY_AWS_KMS_LOCAL_KEYS the local
 * KEKs moving in (the environment's, or the keyring file REKEY_KEYRING_FILE names).
 */
export const kmsStore: ProcessStore<'aws-kms'> = {
  value: 'aws-kms',
  open: (context) => {
    const kms = KmsKeys.fromEnv(context.env, context.onRequest);
    const { localKeys } = kms.settings;
    if (localKeys === undefined) return kms;
    return new KmsWithLocalKeys(
      kms,
      localKeys === 'env' ? new EnvKeyProvider(context.env) : FileKeyring.open(keyringFileOf(context)),
    );
  },
  reads: (env) => {
    const prefix = env.REKEY_AWS_KMS_ALIAS_PREFIX?.trim() || 'alias/rekey/';
    const local = env.REKEY_AWS_KMS_LOCAL_KEYS?.trim();
    return [
      { key: `aws-kms ${prefix}`, what: `AWS KMS keys under ${prefix}kek-*` },
      ...(local === 'env' ? envStore.reads(env) : local === 'file' ? fileStore.reads(env) : []),
    ];
  },
};
