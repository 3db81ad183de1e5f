import {
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  GenerateDataKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  KMSClient,
  ListAliasesCommand,
  ListKeysCommand,
  ListResourceTagsCommand,
  ReEncryptCommand,
  ScheduleKeyDeletionCommand,
  TagResourceCommand,
  UpdateAliasCommand,
} from '@aws-sdk/client-kms';
import { REKEY_DEK_FORMAT } from '../../codec/formats';
import { compileFormat, type Codec, type KmsValues, type Row } from '../../codec/sealed-format';
import { KMS_REFUSED, kmsKey, KmsRowCrypto, reEncryptInput } from '../../crypto/kms-row-crypto';
import { RequestPacer, type PacerLimits } from '../../crypto/request-pacer';
import type { RewrapRowsOptions, RewrapRowsResult, RowKek } from '../../rewrap/rewrap-rows';
import { awsCall, awsClientConfig, awsFind } from '../aws';
import type { RemoteKek } from '../cipher';
import type { DestroyOutcome, ProvisionOptions, RecordedKek } from '../driver';
import { nextKekId, type HeldKey } from '../local-keys';
import { pacerLimitsFromEnv, RemoteKeysDriver, wholeFromEnv } from '../remote-keys';
import { type OwnerScope, refuseUnclaimed, unclaimedRefusal } from '../owner-rule';
import {
  ConfigError,
  DekUnwrapError,
  KeyMaterialError,
  KeyspaceMismatchError,
  KeyStoreRefusedError,
  OperatorMustActError,
  UnknownKekError,
} from '../../errors';

/** A KEK id a KMS alias can carry: no '.', which alias names refuse. */
const KMS_KEK_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const DEFAULT_ALIAS_PREFIX = 'alias/rekey/';
/** The tag a key rekey created carries: the alias it was created for, so a retried provision finds it. */
export const KMS_KEK_TAG = 'rekey:kek-alias';
/** Each key's tag naming the keyspace it belongs to (`<database id>/<schema.table>`). */
export const KMS_KEYSPACE_TAG = 'rekey:keyspace';
const FINGERPRINT_PREFIX = 'kms:';
/** ListResourceTags answers that mean "not a key this role created": it may not read it, or it is gone. */
const NOT_OURS: ReadonlySet<string> = new Set(['AccessDeniedException', 'NotFoundException']);

/**
 * A KMS KEK's fingerprint is its key ARN: it names one key for good (an alias can be pointed elsewhere, an ARN
 * cannot), so the registry trusts the key, not its name, as it does a key check value.
 */
export function kmsFingerprint(keyArn: string): string {
  return `${FINGERPRINT_PREFIX}${keyArn}`;
}

/** The key ARN a KMS fingerprint names; undefined for any other fingerprint (key bytes held elsewhere). */
export function keyArnOf(fingerprint: string): string | undefined {
  return fingerprint.startsWith(FINGERPRINT_PREFIX) ? fingerprint.slice(FINGERPRINT_PREFIX.length) : undefined;
}

/** The key id a key ARN ends with (`arn:aws:kms:<region>:<account>:key/<key id>`), as ListAliases names targets. */
function keyIdOf(arn: string): string {
  return arn.slice(arn.lastIndexOf('/') + 1);
}

interface KmsKek {
  keyId: string;
  arn: string;
  state: string;
}

/** What a KMS call did, for the metrics: the operation and whether it succeeded. */
export type KmsRequestListener = (operation: string, outcome: 'ok' | 'error') => void;

export interface KmsSettings {
  aliasPrefix: string;
  limits: PacerLimits;
  /** Days between ScheduleKeyDeletion and the deletion (AWS: 7-30): AWS's own last chance to cancel. */
  deletionWindowDays: number;
  /** REKEY_AWS_KMS_LOCAL_KEYS: where KEKs still held locally are, while their rows move into KMS. */
  localKeys?: 'env' | 'file';
}

/** REKEY_AWS_KMS_* settings, checked. */
export function kmsSettingsFromEnv(env: NodeJS.ProcessEnv): KmsSettings {
  const aliasPrefix = env.REKEY_AWS_KMS_ALIAS_PREFIX?.trim() || DEFAULT_ALIAS_PREFIX;
  if (!/^alias\/[A-Za-z0-9/_-]*$/.test(aliasPrefix) || aliasPrefix.startsWith('alias/aws/')) {
    throw new KeyMaterialError(
      `REKEY_AWS_KMS_ALIAS_PREFIX must start with 'alias/' (not 'alias/aws/', which AWS keeps) and hold only letters, digits, '/', '_' and '-', e.g. alias/rekey/prod/; got '${aliasPrefix}'`,
      'REKEY_AWS_KMS_ALIAS_PREFIX',
    );
  }
  return {
    aliasPrefix,
    limits: pacerLimitsFromEnv(env, {
      concurrency: ['REKEY_AWS_KMS_CONCURRENCY', 16, 1, 256],
      rate: ['REKEY_AWS_KMS_RATE', 500, 0, 100_000],
    }),
    deletionWindowDays: wholeFromEnv(env, 'REKEY_AWS_KMS_DELETION_WINDOW_DAYS', 30, 7, 30),
    ...localKeysFromEnv(env),
  };
}

function localKeysFromEnv(env: NodeJS.ProcessEnv): Pick<KmsSettings, 'localKeys'> {
  const raw = env.REKEY_AWS_KMS_LOCAL_KEYS?.trim();
  if (raw === undefined || raw === '') return {};
  if (raw !== 'env' && raw !== 'file') {
    throw new KeyMaterialError(
      `REKEY_AWS_KMS_LOCAL_KEYS must be 'env' (REKEY_KEK_<id>) or 'file' (REKEY_KEYRING_FILE): where the KEKs your rows use now are, while they move into KMS; got '${raw}'`,
      'REKEY_AWS_KMS_LOCAL_KEYS',
    );
  }
  return { localKeys: raw };
}

/**
 * KEKs that never leave AWS KMS: one symmetric KMS key per KEK, named by the alias `<prefix>kek-<id>`; the alias
 * `<prefix>current` names the current one. A new DEK comes from GenerateDataKey, unwrap is Decrypt, and a rotation
 * moves each wrapped DEK with ReEncrypt, inside KMS: no plaintext DEK passes through the worker. Every call binds the
 * encryption context {rekey:tenant, rekey:kek} (REKEY_DEK_FORMAT's KMS form), the role associated data has for
 * local keys. Retire disables the key (its material kept, EnableKey restores it); destroy schedules its deletion.
 *
 * No key bytes are held here: a KMS KEK's fingerprint is its key ARN, and the crypto is done by KMS through
 * `rowCrypto()` (the rewrap engine) and the async DEK operations (the application API).
 */
export class KmsKeys extends RemoteKeysDriver {
  readonly description: string;
  protected readonly product = 'AWS KMS';
  protected readonly kind = 'KMS';
  /** rekey's own DEK format, whose KMS form this store writes. */
  protected readonly codec: Codec = compileFormat(REKEY_DEK_FORMAT);
  private keks = new Map<string, KmsKek>();
  private readonly values: KmsValues;
  private crypto: KmsRowCrypto | undefined;

  constructor(
    private readonly client: KMSClient,
    readonly settings: KmsSettings,
    private readonly onRequest?: KmsRequestListener,
  ) {
    super();
    this.description = `AWS KMS keys under ${settings.aliasPrefix}kek-*`;
    this.values = this.codec.kms!;
  }

  /** From REKEY_AWS_KMS_* and the AWS settings of `env`. Nothing is read until `reload`. */
  static fromEnv(env: NodeJS.ProcessEnv, onRequest?: KmsRequestListener): KmsKeys {
    const settings = kmsSettingsFromEnv(env);
    return new KmsKeys(new KMSClient(awsClientConfig(env, 'KMS')), settings, onRequest);
  }

  aliasOf(kekId: string): string {
    return `${this.settings.aliasPrefix}kek-${kekId}`;
  }

  private get currentAlias(): string {
    return `${this.settings.aliasPrefix}current`;
  }

  /**
   * One KMS call, counted by `operation`; an error no retry fixes becomes a KeyMaterialError naming `iam`, except the
   * answers `callerHandles` names, which the caller gets as they are.
   */
  request<T>(
    operation: string,
    run: () => Promise<T>,
    options: { iam?: string; callerHandles?: ReadonlySet<string> } = {},
  ): Promise<T> {
    return this.counted(
      operation,
      awsCall(this.description, options.iam ?? `kms:${operation}`, run, options.callerHandles),
    );
  }

  /** As `request`, but a key or alias that does not exist is undefined. */
  private find<T>(operation: string, run: () => Promise<T>): Promise<T | undefined> {
    return this.counted(operation, awsFind(this.description, `kms:${operation}`, run));
  }

  private async counted<T>(operation: string, pending: Promise<T>): Promise<T> {
    try {
      const result = await pending;
      this.onRequest?.(operation, 'ok');
      return result;
    } catch (err) {
      this.onRequest?.(operation, 'error');
      throw err;
    }
  }

  /** Every alias under the prefix, paged: alias name → target key id. */
  private async aliases(): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    let marker: string | undefined;
    do {
      const page = await this.request('ListAliases', () =>
        this.client.send(new ListAliasesCommand({ Marker: marker, Limit: 100 })),
      );
      for (const alias of page.Aliases ?? []) {
        if (alias.AliasName?.startsWith(this.settings.aliasPrefix) && alias.TargetKeyId) {
          found.set(alias.AliasName, alias.TargetKeyId);
        }
      }
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker);
    return found;
  }

  private async describe(keyId: string): Promise<KmsKek | undefined> {
    const described = await this.find('DescribeKey', () => this.client.send(new DescribeKeyCommand({ KeyId: keyId })));
    const meta = described?.KeyMetadata;
    if (!meta?.Arn || !meta.KeyId) return undefined;
    return { keyId: meta.KeyId, arn: meta.Arn, state: meta.KeyState ?? 'Unknown' };
  }

  async reload(): Promise<void> {
    const aliases = await this.aliases();
    const keks = new Map<string, KmsKek>();
    const kekPrefix = `${this.settings.aliasPrefix}kek-`;
    const byKeyId = new Map<string, string>();
    for (const [alias, keyId] of aliases) {
      if (!alias.startsWith(kekPrefix)) continue;
      const kekId = alias.slice(kekPrefix.length);
      const kek = await this.describe(keyId);
      // A key scheduled for deletion is destroyed as far as rekey is concerned: it is not held.
      if (!kek || kek.state === 'PendingDeletion' || kek.state === 'PendingReplicaDeletion') continue;
      keks.set(kekId, kek);
      byKeyId.set(kek.keyId, kekId);
    }
    const current = aliases.get(this.currentAlias);
    this.keks = keks;
    this.configuredCurrentKekId = current === undefined ? undefined : byKeyId.get(current);
  }

  protected has(kekId: string): boolean {
    return this.keks.has(kekId);
  }

  protected fingerprint(kekId: string): string {
    return kmsFingerprint(this.kek(kekId).arn);
  }

  protected held(): HeldKey[] {
    return [...this.keks].map(([kekId, kek]) => ({ kekId, fingerprint: kmsFingerprint(kek.arn) }));
  }

  private kek(kekId: string): KmsKek {
    const kek = this.keks.get(kekId);
    if (!kek) throw new UnknownKekError(kekId, this.description);
    return kek;
  }

  /**
   * The key ARN to use for `kekId`, refused unless KMS last said the key is Enabled: a disabled key is one an
   * operator (or a retire) took out of use, whatever the registry says, and not every KMS refuses it (moto does not).
   */
  usableArn(kekId: string): string {
    const kek = this.kek(kekId);
    if (kek.state !== 'Enabled') {
      throw new KeyMaterialError(
        `KMS key ${kek.arn} (KEK '${kekId}') is ${kek.state}: rekey does not use it. Enable it (aws kms enable-key) or restore the KEK with 'rekey keys restore ${kekId}' if it was retired`,
        this.description,
      );
    }
    return kek.arn;
  }

  /**
   * ARN for a KEK the registry recorded by fingerprint: the recorded key itself, used only while the KEK's alias (as
   * last read) names it and KMS last said it is Enabled; refused naming both keys otherwise.
   */
  arnFor(kekId: string, fingerprint: string | undefined): string {
    const named = this.kek(kekId).arn;
    if (fingerprint !== undefined && keyArnOf(fingerprint) !== named) {
      throw this.aliasRefused(kekId, fingerprint, named, 'use');
    }
    return this.usableArn(kekId);
  }

  /**
   * The refusal of a step on KEK `kekId` whose alias does not name the key the registry recorded (`recorded`, its
   * fingerprint): `named` is the ARN the alias names now, undefined when there is no such alias.
   */
  private aliasRefused(kekId: string, recorded: string, named: string | undefined, step: string): KeyStoreRefusedError {
    const alias = this.aliasOf(kekId);
    const arn = keyArnOf(recorded);
    const now = named === undefined ? 'names no key' : `names ${named}`;
    if (arn === undefined) {
      return new KeyStoreRefusedError(
        `KEK '${kekId}': the registry recorded a key held outside KMS (${recorded}), but ${alias} ${now}: rekey does not ${step} either. A KEK id names one key: remove the alias (aws kms delete-alias --alias-name ${alias}) if that KMS key is not this keyspace's KEK '${kekId}'`,
      );
    }
    const fix =
      named === undefined
        ? `name it again: aws kms create-alias --alias-name ${alias} --target-key-id ${arn}`
        : `point the alias back: aws kms update-alias --alias-name ${alias} --target-key-id ${arn}`;
    return new KeyStoreRefusedError(
      `KEK '${kekId}': the registry recorded KMS key ${arn}, but its alias ${alias} ${now}: rekey does not ${step} either key. If ${arn} is still KEK '${kekId}', ${fix}, then run the step again; if another deployment uses the alias prefix ${this.settings.aliasPrefix}, give each deployment a prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX) first`,
    );
  }

  // ---- The application's DEK operations (TenantCrypto) ----

  /** A new DEK from GenerateDataKey under `kekId`: the plaintext (the caller zeroizes it) and its stored form. */
  async newDek(kekId: string, tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }> {
    const arn = this.usableArn(kekId);
    const generated = await this.request('GenerateDataKey', () =>
      this.client.send(
        new GenerateDataKeyCommand({
          KeyId: arn,
          KeySpec: 'AES_256',
          EncryptionContext: this.values.context({ tenant_id: tenantId }, kekId),
        }),
      ),
    );
    const plaintext = generated.Plaintext!;
    const dek = Buffer.from(plaintext);
    plaintext.fill(0);
    return { dek, wrapped: this.values.value(generated.CiphertextBlob!) };
  }

  /** Decrypt of a stored DEK; DekUnwrapError when KMS refuses the blob for this tenant and KEK. */
  async unwrapDek(kekId: string, tenantId: string, wrapped: Buffer): Promise<Buffer> {
    const row = { tenant_id: tenantId, wrapped_dek: wrapped };
    const arn = this.usableArn(kekId);
    let plaintext: Uint8Array;
    try {
      const decrypted = await this.request(
        'Decrypt',
        () =>
          this.client.send(
            new DecryptCommand({
              CiphertextBlob: this.values.blob(row),
              KeyId: arn,
              EncryptionContext: this.values.context(row, kekId),
            }),
          ),
        { callerHandles: KMS_REFUSED },
      );
      plaintext = decrypted.Plaintext!;
    } catch (err) {
      const name = (err as { name?: string }).name ?? '';
      if (KMS_REFUSED.has(name)) throw new DekUnwrapError(tenantId, kekId, `KMS refused it (${name})`);
      throw err;
    }
    const dek = Buffer.from(plaintext);
    plaintext.fill(0);
    return dek;
  }

  /** ReEncrypt of a stored DEK from one KEK to another, inside KMS. */
  async rewrapDek(from: string, to: string, tenantId: string, wrapped: Buffer): Promise<Buffer> {
    const row = { tenant_id: tenantId, wrapped_dek: wrapped };
    const moved = await this.request('ReEncrypt', () =>
      this.client.send(
        new ReEncryptCommand(
          reEncryptInput(
            this.values,
            row,
            this.values.blob(row),
            kmsKey(from, this.usableArn(from)),
            kmsKey(to, this.usableArn(to)),
          ),
        ),
      ),
    );
    return this.values.value(moved.CiphertextBlob!);
  }

  /**
   * The stored form under the KMS KEK `kekId` of a DEK opened elsewhere (Encrypt): how a DEK wrapped by a KEK held
   * locally moves into KMS. The caller zeroizes `dek`.
   */
  encryptDek(kekId: string, tenantId: string, dek: Buffer): Promise<Buffer> {
    return this.rowCrypto().encrypt(this.values, { tenant_id: tenantId }, dek, kmsKey(kekId, this.usableArn(kekId)));
  }

  /** The rewrap engine's crypto for this store: ReEncrypt per row, paced by REKEY_AWS_KMS_CONCURRENCY and _RATE. */
  rowCrypto(): KmsRowCrypto {
    this.crypto ??= new KmsRowCrypto(
      this.client,
      new RequestPacer(this.settings.limits),
      (kek) => this.arnFor(kek.kekId, kek.fingerprint),
      (operation, run, options) => this.request(operation, run, options),
    );
    return this.crypto;
  }

  protected sealOpened(to: RemoteKek, tenantId: string, dek: Buffer): Promise<Buffer> {
    return this.encryptDek(to.kekId, tenantId, dek);
  }

  /** Rows whose DEKs are under key bytes, moved into KMS (Encrypt): a move in from a local store. */
  protected importRows(
    codec: Codec,
    from: RowKek,
    to: RemoteKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    return this.rowCrypto().importRows(codec, from, { ...to, key: Buffer.alloc(0) }, rows, options);
  }

  /** A DEK made under the KEK without its plaintext (GenerateDataKeyWithoutPlaintext): the self-test's probe. */
  protected async probe(kek: RemoteKek, tenantId: string): Promise<Row> {
    const row = { tenant_id: tenantId };
    const made = await this.request('GenerateDataKeyWithoutPlaintext', () =>
      this.client.send(
        new GenerateDataKeyWithoutPlaintextCommand({
          KeyId: this.arnFor(kek.kekId, kek.fingerprint),
          KeySpec: 'AES_256',
          EncryptionContext: this.values.context(row, kek.kekId),
        }),
      ),
    );
    return { ...row, wrapped_dek: this.values.value(made.CiphertextBlob!) };
  }

  // ---- Lifecycle ----

  /**
   * Creates the KEK's KMS key and alias. Idempotent: an alias already there is the KEK; on a retry (`options.retry`),
   * a key rekey created for the alias whose answer was lost (the activity timed out after KMS created it) is found by
   * its tag and given the alias, so a retried provision never leaves a second key. A first attempt does not look: the
   * search reads the tags of every key the role sees, which in a large account takes longer than the step may. The
   * first KEK also gets the `current` alias, unless KEKs are moving in from a local source (promote names it).
   */
  protected async generate(kekId?: string, options: ProvisionOptions = {}): Promise<string> {
    const aliases = await this.aliases();
    const id = kekId ?? nextKekId([...aliases.keys()].map((alias) => alias.slice(this.aliasOf('').length)));
    if (!KMS_KEK_ID.test(id)) {
      throw new KeyMaterialError(
        `KEK id '${id}' cannot name a KMS alias: use 1-64 letters, digits, '_' or '-', starting with a letter or digit`,
        this.description,
      );
    }
    const alias = this.aliasOf(id);
    let keyId = aliases.get(alias);
    if (keyId === undefined) {
      keyId =
        (options.retry ? await this.createdFor(alias, options.searchUntil) : undefined) ??
        (await this.createKey(id, alias, options.owner));
      await this.request('CreateAlias', () =>
        this.client.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: keyId })),
      );
    }
    // While KEKs move in from a local source, the current KEK is a local one until the registry promotes a KMS key.
    if (!aliases.has(this.currentAlias) && this.settings.localKeys === undefined) {
      await this.request('CreateAlias', () =>
        this.client.send(new CreateAliasCommand({ AliasName: this.currentAlias, TargetKeyId: keyId })),
      );
    }
    await this.reload();
    return id;
  }

  private async createKey(kekId: string, alias: string, owner?: string): Promise<string> {
    const created = await this.request('CreateKey', () =>
      this.client.send(
        new CreateKeyCommand({
          Description: `rekey KEK '${kekId}' (${alias})`,
          KeyUsage: 'ENCRYPT_DECRYPT',
          KeySpec: 'SYMMETRIC_DEFAULT',
          Tags: [
            { TagKey: KMS_KEK_TAG, TagValue: alias },
            ...(owner !== undefined ? [{ TagKey: KMS_KEYSPACE_TAG, TagValue: owner }] : []),
          ],
        }),
      ),
    );
    return created.KeyMetadata!.KeyId!;
  }

  /**
   * A key of this account tagged for `alias` and not scheduled for deletion (a lost CreateKey answer). The tags are
   * read a few keys at a time, on the rotation's request pace (REKEY_AWS_KMS_RATE), until `until` (epoch ms): past
   * that the search gives up, and the caller creates a key (the earlier one stays tagged, with no alias).
   */
  private async createdFor(alias: string, until = Infinity): Promise<string | undefined> {
    const pacer = new RequestPacer({
      ...this.settings.limits,
      concurrency: Math.min(8, this.settings.limits.concurrency),
    });
    let marker: string | undefined;
    do {
      const page = await this.request('ListKeys', () =>
        this.client.send(new ListKeysCommand({ Marker: marker, Limit: 1000 })),
      );
      const tagged = await pacer.map(page.Keys ?? [], async (key) => {
        if (Date.now() >= until) return undefined;
        let tags;
        try {
          tags = await this.request(
            'ListResourceTags',
            () => this.client.send(new ListResourceTagsCommand({ KeyId: key.KeyId })),
            { callerHandles: NOT_OURS },
          );
        } catch (err) {
          // A key this role may not read is not one it created; one deleted since the listing is gone.
          if (NOT_OURS.has((err as { name?: string }).name ?? '')) return undefined;
          throw err;
        }
        return tags.Tags?.some((tag) => tag.TagKey === KMS_KEK_TAG && tag.TagValue === alias) ? key.KeyId : undefined;
      });
      for (const keyId of tagged) {
        if (keyId === undefined) continue;
        const kek = await this.describe(keyId);
        if (kek && kek.state !== 'PendingDeletion') return kek.keyId;
      }
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker && Date.now() < until);
    return undefined;
  }

  /**
   * Before a provision writes anything: every alias under the prefix must be this keyspace's. A deployment is
   * recognised by its registry: `<prefix>kek-<id>` must name the key the registry recorded for `<id>`, and
   * `<prefix>current` a key the registry recorded. An alias of a KEK the registry does not record is refused (another
   * deployment's, or made by hand), except the one being provisioned when its key is one rekey created for that alias
   * (tagged `rekey:kek-alias=<alias>`: made by `rekey keys generate`, or by an attempt whose registration was lost).
   */
  async claim(provisioning: string, registry: readonly RecordedKek[]): Promise<void> {
    const recordedKeys = new Set<string>();
    for (const kek of registry) {
      const arn = keyArnOf(kek.fingerprint);
      if (arn !== undefined) recordedKeys.add(keyIdOf(arn));
    }
    const kekPrefix = this.aliasOf('');
    const foreign: string[] = [];
    for (const [alias, keyId] of await this.aliases()) {
      if (alias === this.currentAlias) {
        if (!recordedKeys.has(keyId)) foreign.push(`${alias} (${await this.arnOfKey(keyId)})`);
        continue;
      }
      const kekId = alias.slice(kekPrefix.length);
      // Another naming under the prefix (a deployment's nested prefix, alias/rekey/prod/...) is not this one's.
      if (!alias.startsWith(kekPrefix) || !KMS_KEK_ID.test(kekId)) continue;
      const record = registry.find((kek) => kek.kekId === kekId);
      if (record) {
        const arn = keyArnOf(record.fingerprint);
        if (arn === undefined || keyIdOf(arn) !== keyId) {
          throw this.aliasRefused(kekId, record.fingerprint, await this.arnOfKey(keyId), 'provision a KEK beside');
        }
        continue;
      }
      if (kekId === provisioning && (await this.taggedFor(keyId, alias))) continue;
      const why = kekId === provisioning ? `, which rekey did not create for it (no tag ${KMS_KEK_TAG}=${alias})` : '';
      foreign.push(`${alias} (${await this.arnOfKey(keyId)}${why})`);
    }
    if (foreign.length === 0) return;
    throw new KeyStoreRefusedError(
      `the alias prefix ${this.settings.aliasPrefix} holds ${foreign.join(', ')}, which this keyspace's registry does not record: another deployment (or a person) uses this prefix, and rekey does not provision KEKs beside keys a rotation could then disable or delete. Give this keyspace a prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX, e.g. alias/rekey/prod/) and rotate again, or remove the aliases that are not this keyspace's (aws kms delete-alias --alias-name <alias>)`,
    );
  }

  /** The ARN of a key by its id, for messages; the id itself when KMS no longer describes it. */
  private async arnOfKey(keyId: string): Promise<string> {
    return (await this.describe(keyId))?.arn ?? keyId;
  }

  /** Whether rekey created this key for `alias` (its tag); a key the role may not read or that is gone is not. */
  private async taggedFor(keyId: string, alias: string): Promise<boolean> {
    try {
      const tags = await this.request(
        'ListResourceTags',
        () => this.client.send(new ListResourceTagsCommand({ KeyId: keyId })),
        { callerHandles: NOT_OURS },
      );
      return tags.Tags?.some((tag) => tag.TagKey === KMS_KEK_TAG && tag.TagValue === alias) ?? false;
    } catch (err) {
      if (NOT_OURS.has((err as { name?: string }).name ?? '')) return false;
      throw err;
    }
  }

  /**
   * The key the registry recorded for `kekId`, as KMS describes it now by its ARN (undefined once KMS has deleted
   * it), proven before `step` acts on it: the KEK's alias must name that key now, else the step is refused naming both.
   * The step then names the key by the id this description gives (the recorded key, in this client's account and
   * region: moto answers DisableKey, EnableKey and ScheduleKeyDeletion given an ARN with an internal error).
   */
  private async recorded(kekId: string, registry: readonly RecordedKek[], step: string): Promise<KmsKek | undefined> {
    const record = registry.find((kek) => kek.kekId === kekId);
    if (!record) throw new UnknownKekError(kekId, "this keyspace's registry");
    const arn = keyArnOf(record.fingerprint);
    if (arn === undefined) throw this.aliasRefused(kekId, record.fingerprint, undefined, step);
    // A key of another region is not found from this one: that must not read as "deleted".
    const region = await this.client.config.region();
    if (arn.split(':')[3] !== region) {
      throw new KeyMaterialError(
        `KMS key ${arn} (KEK '${kekId}') is in another region than this process's AWS_REGION (${region}): rekey does not ${step} it from here. Run it with the region the keyspace's keys are in`,
        this.description,
      );
    }
    const kek = await this.describe(arn);
    if (!kek || kek.state === 'PendingDeletion' || kek.state === 'PendingReplicaDeletion') return kek;
    const named = await this.describe(this.aliasOf(kekId));
    if (named?.keyId !== kek.keyId) throw this.aliasRefused(kekId, record.fingerprint, named?.arn, step);
    return kek;
  }

  /** As `recorded`, for a step that needs the key to exist: one gone or pending deletion is refused. */
  private async existing(kekId: string, registry: readonly RecordedKek[], step: string): Promise<KmsKek> {
    const kek = await this.recorded(kekId, registry, step);
    if (kek && kek.state !== 'PendingDeletion' && kek.state !== 'PendingReplicaDeletion') return kek;
    const arn = keyArnOf(registry.find((k) => k.kekId === kekId)!.fingerprint)!;
    throw new KeyMaterialError(
      kek
        ? `KMS key ${arn} (KEK '${kekId}') is scheduled for deletion: rekey does not ${step} it. Within AWS's pending window 'aws kms cancel-key-deletion --key-id ${arn}' stops the deletion (then enable it if it was enabled)`
        : `KMS key ${arn} (KEK '${kekId}') no longer exists: rekey cannot ${step} it`,
      this.description,
    );
  }

  /** Updates the state last read for `kekId`, when it was read as this key. */
  private noteState(kekId: string, kek: KmsKek, state: string): void {
    const cached = this.keks.get(kekId);
    if (cached?.keyId === kek.keyId) cached.state = state;
  }

  /**
   * Points `<prefix>current` at the key the registry recorded for `to` (the registry promoted it), proven first: `to`'s
   * alias names that key, KMS says it is Enabled, and `current` names the key recorded for `from` (or none yet, or
   * already `to`'s). Anything else was moved behind the registry's back, and is refused.
   */
  async promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void> {
    const target = await this.existing(to, registry, 'promote');
    if (target.state !== 'Enabled') {
      throw new KeyMaterialError(
        `KMS key ${target.arn} (KEK '${to}') is ${target.state}: rekey does not make it current. Enable it (aws kms enable-key --key-id ${target.arn})`,
        this.description,
      );
    }
    const current = await this.describe(this.currentAlias);
    if (current?.keyId !== target.keyId) {
      if (current !== undefined) {
        const recordedFrom = registry.find((kek) => kek.kekId === from)?.fingerprint;
        const fromArn = recordedFrom === undefined ? undefined : keyArnOf(recordedFrom);
        if (fromArn === undefined || keyIdOf(fromArn) !== current.keyId) {
          throw new KeyStoreRefusedError(
            `${this.currentAlias} names KMS key ${current.arn}, which is neither the key the registry recorded for '${from}' (${recordedFrom ?? 'none'}) nor the key recorded for '${to}' (${target.arn}): it was moved behind the registry's back, or another deployment uses the alias prefix ${this.settings.aliasPrefix}. rekey does not move it. Give each deployment a prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX), or point it at ${fromArn ?? target.arn} (aws kms update-alias --alias-name ${this.currentAlias} --target-key-id ${fromArn ?? target.arn}) and run the step again`,
          );
        }
      }
      const Command = current === undefined ? CreateAliasCommand : UpdateAliasCommand;
      await this.request(current === undefined ? 'CreateAlias' : 'UpdateAlias', () =>
        this.client.send(new Command({ AliasName: this.currentAlias, TargetKeyId: target.keyId })),
      );
    }
    this.configuredCurrentKekId = to;
  }

  /**
   * Disables the key the registry recorded for the KEK (its alias proven to name it): KMS keeps its material and
   * refuses to use it until EnableKey (a restore).
   */
  async retire(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    const kek = await this.existing(kekId, registry, 'disable');
    if (kek.state !== 'Disabled') {
      await this.request('DisableKey', () => this.client.send(new DisableKeyCommand({ KeyId: kek.keyId })));
    }
    this.noteState(kekId, kek, 'Disabled');
  }

  /** Enables the key the registry recorded for the KEK again (its alias proven to name it). */
  async restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    const recorded = registry.find((k) => k.kekId === kekId);
    // Retire leaves the key in KMS (disabled): one KMS no longer lists (pending deletion) only the operator can bring back.
    if (recorded !== undefined && !this.holds(recorded.fingerprint)) {
      throw new OperatorMustActError(
        this.description,
        `put KEK '${kekId}' back into ${this.description}, the key the registry recorded`,
      );
    }
    const kek = await this.existing(kekId, registry, 'enable');
    if (kek.state !== 'Enabled') {
      await this.request('EnableKey', () => this.client.send(new EnableKeyCommand({ KeyId: kek.keyId })));
    }
    this.noteState(kekId, kek, 'Enabled');
  }

  /**
   * Schedules the deletion of the key the registry recorded for the KEK, after AWS's pending window
   * (REKEY_AWS_KMS_DELETION_WINDOW_DAYS), once proven: its alias names that key, and KMS says it is Disabled, as retire
   * left it (a key enabled since may be in use again). A key already gone or pending deletion is destroyed.
   */
  async destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    const kek = await this.recorded(kekId, registry, 'schedule the deletion of');
    const arn = keyArnOf(registry.find((k) => k.kekId === kekId)!.fingerprint)!;
    if (!kek) return { destroyed: true, detail: `KMS key ${arn} no longer exists: already gone` };
    if (kek.state === 'PendingDeletion' || kek.state === 'PendingReplicaDeletion') {
      return { destroyed: true, detail: `KMS key ${arn} is already scheduled for deletion` };
    }
    if (kek.state !== 'Disabled') {
      throw new KeyStoreRefusedError(
        `KMS key ${arn} (KEK '${kekId}') is ${kek.state}, but retire left it Disabled: it was enabled since, perhaps for a reader that still uses it, and rekey does not schedule its deletion. If nothing uses it, disable it (aws kms disable-key --key-id ${arn}) and run the step again; if something does, restore the KEK (rekey keys restore ${kekId} --reason "...")`,
      );
    }
    const scheduled = await this.request('ScheduleKeyDeletion', () =>
      this.client.send(
        new ScheduleKeyDeletionCommand({ KeyId: kek.keyId, PendingWindowInDays: this.settings.deletionWindowDays }),
      ),
    );
    if (this.keks.get(kekId)?.keyId === kek.keyId) this.keks.delete(kekId);
    const when = scheduled.DeletionDate?.toISOString() ?? `in ${this.settings.deletionWindowDays} days`;
    return {
      destroyed: true,
      detail: `KMS key ${arn} is scheduled for deletion on ${when} (until then 'aws kms cancel-key-deletion --key-id ${arn}' can still stop it)`,
    };
  }

  /**
   * The keyspace a key belongs to: its tag `rekey:keyspace`. A KEK no alias names any more, or whose key is pending
   * deletion (a destroy whose registry write was lost), has no owner to read here: the step's own checks act on the
   * recorded ARN and refuse or find it already scheduled.
   */
  async ownerOf(kekId: string): Promise<string | undefined> {
    const kek = await this.fresh(kekId).catch((err: unknown) => {
      if (err instanceof UnknownKekError) return undefined;
      throw err;
    });
    return kek === undefined ? undefined : (await this.keyspaceTag(kek.keyId)).owner;
  }

  /**
   * Tags as `keyspace`'s the untagged keys under the prefix that its registry recorded; an untagged key it does not
   * record (another deployment's, perhaps) refuses the adoption before any tag is written (owner-rule.ts, per key:
   * each KMS key carries its own tag). Keys tagged for any keyspace are left as they are (the keyring refuses another
   * keyspace's when a step would use it).
   */
  async adopt(keyspace: string, registry: readonly RecordedKek[] = []): Promise<void> {
    await this.reload();
    const untagged = [];
    for (const [kekId, kek] of this.keks) {
      if ((await this.keyspaceTag(kek.keyId)).owner === undefined) untagged.push({ ...this.unowned(kekId), kek });
    }
    refuseUnclaimed(this.ownerScope, untagged, registry, keyspace);
    for (const { kek } of untagged) await this.tagOwner(kek.keyId, keyspace);
  }

  /** How the owner rule names this store's keys: each its own tag, under the alias prefix. */
  private get ownerScope(): OwnerScope {
    const prefix = this.settings.aliasPrefix;
    return {
      recordPer: 'key',
      subject: (listed) => `the alias prefix ${prefix} holds KMS key(s) ${listed} with no ${KMS_KEYSPACE_TAG} tag`,
      mayBe: 'a KEK made by an earlier rekey keys generate, which did not tag it, or made by hand',
      ownKeys: 'an alias prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX, e.g. alias/rekey/prod/)',
    };
  }

  /** KEK `kekId` as the owner rule names it: its fingerprint (kms:<ARN>), alias and ARN. */
  private unowned(kekId: string): { kekId: string; fingerprint: string; shown: string } {
    const { arn } = this.kek(kekId);
    return { kekId, fingerprint: kmsFingerprint(arn), shown: `${this.aliasOf(kekId)}, ${arn}` };
  }

  /**
   * The operator's claim of KEK `kekId` for `keyspace` (`rekey keys claim`): its alias must name the key `fingerprint`
   * names (kms:<key ARN>), which must carry no owner tag (or this keyspace's already); then it is tagged. Another
   * keyspace's key is refused.
   */
  async claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'> {
    const arn = keyArnOf(fingerprint);
    if (arn === undefined) {
      throw new ConfigError(
        `--fingerprint must name the KMS key as rekey prints it, kms:<key ARN> (rekey keys list), not '${fingerprint}'`,
      );
    }
    await this.reload();
    const kek = this.kek(kekId);
    if (kek.arn !== arn) throw this.aliasRefused(kekId, kmsFingerprint(arn), kek.arn, 'claim');
    const { owner } = await this.keyspaceTag(kek.keyId);
    if (owner === keyspace) return 'already';
    if (owner !== undefined) {
      throw new KeyspaceMismatchError(
        `not claiming KEK '${kekId}': KMS key ${arn} carries the tag ${KMS_KEYSPACE_TAG}=${owner}, another keyspace's, and this is keyspace ${keyspace}. rekey does not take a key from another keyspace: give this keyspace an alias prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX)`,
      );
    }
    await this.tagOwner(kek.keyId, keyspace);
    return 'claimed';
  }

  /** An empty registry is seeded only with a key this keyspace's tag names (else claimed first: rekey keys claim). */
  override async refuseSeed(kekId: string, keyspace: string): Promise<void> {
    const owner = await this.ownerOf(kekId);
    if (owner === keyspace) return;
    const kek = this.kek(kekId);
    if (owner === undefined) {
      throw unclaimedRefusal(this.ownerScope, [this.unowned(kekId)], keyspace);
    }
    throw new KeyspaceMismatchError(
      `not seeding the registry of keyspace ${keyspace} with KEK '${kekId}': KMS key ${kek.arn} carries the tag ${KMS_KEYSPACE_TAG}=${owner}, another keyspace's. Give this keyspace an alias prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX)`,
    );
  }

  private async tagOwner(keyId: string, keyspace: string): Promise<void> {
    await this.request('TagResource', () =>
      this.client.send(
        new TagResourceCommand({ KeyId: keyId, Tags: [{ TagKey: KMS_KEYSPACE_TAG, TagValue: keyspace }] }),
      ),
    );
  }

  /** The KEK as last read, read again first when another process made it since. */
  private async fresh(kekId: string): Promise<KmsKek> {
    if (!this.keks.has(kekId)) await this.reload();
    return this.kek(kekId);
  }

  private async keyspaceTag(keyId: string): Promise<{ owner?: string }> {
    const tags = await this.request('ListResourceTags', () =>
      this.client.send(new ListResourceTagsCommand({ KeyId: keyId })),
    );
    const owner = tags.Tags?.find((tag) => tag.TagKey === KMS_KEYSPACE_TAG)?.TagValue;
    return owner === undefined ? {} : { owner };
  }

  close(): void {
    this.crypto = undefined;
    this.client.destroy();
  }
}
