import { REKEY_DEK_FORMAT } from '../../codec/formats';
import { compileFormat, type Codec, type Row, type TransitValues } from '../../codec/sealed-format';
import { refusedMoveIn, type RemoteKek } from '../cipher';
import { RequestPacer, type PacerLimits } from '../../crypto/request-pacer';
import { TransitRowCrypto, type TransitItem, type TransitOutcome } from '../../crypto/transit-row-crypto';
import type { RewrapRowsResult } from '../../rewrap/rewrap-rows';
import type { DestroyOutcome, ProcessStore, ProvisionOptions, RecordedKek } from '../driver';
import type { HeldKey } from '../local-keys';
import { pacerLimitsFromEnv, RemoteKeysDriver, wholeFromEnv } from '../remote-keys';
import { VaultHttp, vaultPath, type VaultCapability, type VaultRequestListener } from '../vault-http';
import { TransitOwnerRecord, transitOwnerPlace, type TransitOwnerPlace } from '../transit-owner';
import { type OwnerScope, refuseSeedUnlessOwned, refuseUnclaimed, storeScope } from '../owner-rule';
import {
  DekUnwrapError,
  KekFingerprintMismatchError,
  KeyMaterialError,
  KeyspaceMismatchError,
  KeyStoreRefusedError,
  UnknownKekError,
} from '../../errors';

const FINGERPRINT_PREFIX = 'vault-transit:';
/** Transit's answers about an item that say "not this key, context or version": the row, not the call, is at fault. */
const REFUSED = /message authentication failed|disallowed by policy|invalid ciphertext|unable to decrypt|version/i;

export interface TransitSettings {
  mount: string;
  key: string;
  limits: PacerLimits;
  /** Items per `rewrap` request (`batch_input`). */
  batch: number;
  /** Where the key's owner record is (a KV v2 secret: Transit keys hold no metadata). */
  owner: TransitOwnerPlace;
}

/** REKEY_VAULT_TRANSIT_* settings, checked. */
export function transitSettingsFromEnv(env: NodeJS.ProcessEnv): TransitSettings {
  const key = env.REKEY_VAULT_TRANSIT_KEY?.trim();
  if (!key || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(key)) {
    throw new KeyMaterialError(
      `REKEY_VAULT_TRANSIT_KEY must name the keyspace's Transit key (letters, digits, '_', '.', '-'), e.g. rekey-prod; got '${key ?? ''}'`,
      'REKEY_VAULT_TRANSIT_KEY',
    );
  }
  const mount = vaultPath(env.REKEY_VAULT_TRANSIT_MOUNT?.trim() || 'transit', 'REKEY_VAULT_TRANSIT_MOUNT', 'transit');
  return {
    mount,
    key,
    owner: transitOwnerPlace({ mount, key }),
    limits: pacerLimitsFromEnv(env, {
      concurrency: ['REKEY_VAULT_TRANSIT_CONCURRENCY', 4, 1, 64],
      rate: ['REKEY_VAULT_TRANSIT_RATE', 50, 0, 10_000],
    }),
    batch: wholeFromEnv(env, 'REKEY_VAULT_TRANSIT_BATCH', 250, 1, 10_000),
  };
}

interface TransitKey {
  derived: boolean;
  type: string;
  /** Version → creation time (unix seconds), for the versions Vault lists (those it still decrypts with). */
  keys: Record<string, number>;
  latest_version: number;
  min_decryption_version: number;
  min_encryption_version: number;
  min_available_version: number;
}

/** The KEK id of a Transit key version: `v<n>`. */
const kekIdOf = (version: number) => `v${version}`;
const versionOfId = (kekId: string): number | undefined => {
  const match = /^v([1-9][0-9]{0,9})$/.exec(kekId);
  return match ? Number(match[1]) : undefined;
};

/**
 * KEKs that never leave Vault: the versions of one Transit key per keyspace (REKEY_VAULT_TRANSIT_KEY, at
 * REKEY_VAULT_TRANSIT_MOUNT, `transit` by default), KEK `v<n>` being version n. The key is `derived`: each DEK is
 * encrypted under a key derived from the version and a context that binds the tenant (REKEY_DEK_FORMAT's Transit
 * form), so another tenant's context opens nothing, and `rewrap` keeps that binding inside Vault (it drops associated
 * data, which a derived key does not need). A new DEK comes from `datakey/plaintext`, unwrap is `decrypt`, and a
 * rotation moves each wrapped DEK with `rewrap` (`batch_input`, paced): no plaintext DEK passes through the worker.
 * Every call names the key version it means (`key_version`); Transit's `latest_version` decides nothing.
 *
 * Lifecycle: provision = `rotate` (a new version); retire = raising `min_decryption_version` past the KEK (Vault
 * keeps the version, refuses to use it); restore = lowering it again; destroy = `trim` (the versions below are
 * removed for good). A KEK's fingerprint is `vault-transit:<mount>/<key>:v<n>@<creation time>`: a key deleted and
 * made again under the same name has other creation times, and is refused.
 */
export class VaultTransitKeys extends RemoteKeysDriver {
  readonly description: string;
  protected readonly product = 'Vault Transit';
  protected readonly kind = 'Transit';
  /** rekey's own DEK format, whose Transit form this store writes. */
  protected readonly codec: Codec = compileFormat(REKEY_DEK_FORMAT);
  private state: TransitKey | undefined;
  private readonly values: TransitValues;
  private crypto: TransitRowCrypto | undefined;
  private readonly ownerRecord: TransitOwnerRecord;

  constructor(
    readonly http: VaultHttp,
    readonly settings: TransitSettings,
  ) {
    super();
    this.description = `Vault Transit key '${settings.mount}/${settings.key}' (${http.description})`;
    this.values = this.codec.transit!;
    this.ownerRecord = new TransitOwnerRecord(http, settings.owner, this.description);
  }

  /** From VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE and REKEY_VAULT_TRANSIT_*. Nothing is read until `reload`. */
  static fromEnv(env: NodeJS.ProcessEnv, onRequest?: VaultRequestListener): VaultTransitKeys {
    return new VaultTransitKeys(VaultHttp.fromEnv(env, onRequest), transitSettingsFromEnv(env));
  }

  private api(kind: string): string {
    const { mount, key } = this.settings;
    return kind === 'keys' ? `${mount}/keys/${key}` : `${mount}/${kind}/${key}`;
  }

  /** Every capability the worker's steps need, by path: the policy in docs/06-key-stores.md grants exactly these. */
  capabilitiesNeeded(): Record<string, VaultCapability[]> {
    return {
      [this.api('keys')]: ['create', 'read', 'update'],
      [`${this.api('keys')}/rotate`]: ['update'],
      [`${this.api('keys')}/config`]: ['update'],
      [`${this.api('keys')}/trim`]: ['update'],
      [this.api('rewrap')]: ['update'],
      [this.api('datakey/wrapped')]: ['update'],
      ...this.ownerRecord.capabilities(),
    };
  }

  async reload(): Promise<void> {
    const answer = await this.http.send<{ data: TransitKey }>('GET', this.api('keys'), {
      operation: 'transit read key',
      needs: ['read'],
      expect: [404],
    });
    const state = answer.status === 404 ? undefined : answer.body!.data;
    if (state && !state.derived) {
      throw new KeyMaterialError(
        `${this.description} is not a derived key: rekey binds each DEK to its tenant with a derived key's context (Transit's rewrap drops associated data). Give the keyspace a key of its own made by rekey (REKEY_VAULT_TRANSIT_KEY naming one that does not exist yet), or made with derived=true`,
        this.description,
      );
    }
    this.state = state;
    this.configuredCurrentKekId = state ? kekIdOf(state.latest_version) : undefined;
  }

  protected has(kekId: string): boolean {
    const version = versionOfId(kekId);
    return version !== undefined && this.state?.keys[String(version)] !== undefined;
  }

  protected fingerprint(kekId: string): string {
    const version = this.version(kekId);
    return `${FINGERPRINT_PREFIX}${this.settings.mount}/${this.settings.key}:v${version}@${this.state!.keys[String(version)]}`;
  }

  private version(kekId: string): number {
    const version = versionOfId(kekId);
    if (version === undefined || !this.has(kekId)) throw new UnknownKekError(kekId, this.description);
    return version;
  }

  /** The versions Vault decrypts with (min_decryption_version to latest). */
  protected held(): HeldKey[] {
    return Object.keys(this.state?.keys ?? {})
      .map((v) => kekIdOf(Number(v)))
      .sort()
      .map((kekId) => ({ kekId, fingerprint: this.fingerprint(kekId) }));
  }

  /**
   * The key version to use for a KEK the registry recorded by `fingerprint`: refused unless Vault lists the version
   * with the recorded creation time (the same key, not one made again under its name).
   */
  versionFor(kekId: string, fingerprint: string | undefined): number {
    const version = this.version(kekId);
    if (fingerprint !== undefined && fingerprint !== this.fingerprint(kekId)) {
      throw new KeyStoreRefusedError(
        `KEK '${kekId}': the registry recorded ${fingerprint}, but ${this.description} has ${this.fingerprint(kekId)}: the key was made again under its name, or the registry is another keyspace's. rekey does not use it`,
      );
    }
    return version;
  }

  // ---- The application's DEK operations (TenantCrypto) ----

  async newDek(kekId: string, tenantId: string): Promise<{ dek: Buffer; wrapped: Buffer }> {
    const answer = await this.http.call<{ data: { plaintext: string; ciphertext: string } }>(
      'POST',
      this.api('datakey/plaintext'),
      {
        operation: 'transit datakey',
        needs: ['update'],
        body: { context: this.values.context({ tenant_id: tenantId }), key_version: this.version(kekId), bits: 256 },
      },
    );
    const dek = Buffer.from(answer.data.plaintext, 'base64');
    answer.data.plaintext = '';
    return { dek, wrapped: this.values.value(answer.data.ciphertext) };
  }

  async unwrapDek(kekId: string, tenantId: string, wrapped: Buffer): Promise<Buffer> {
    const row = { tenant_id: tenantId, wrapped_dek: wrapped };
    const ciphertext = this.values.ciphertext(row);
    if (this.values.version(ciphertext) !== this.version(kekId)) {
      throw new DekUnwrapError(tenantId, kekId, `it names another Transit key version than '${kekId}'`);
    }
    const answer = await this.http.send<{ data: { plaintext: string } }>('POST', this.api('decrypt'), {
      operation: 'transit decrypt',
      needs: ['update'],
      body: { ciphertext, context: this.values.context(row) },
      expect: [400],
    });
    if (answer.status === 400) {
      throw new DekUnwrapError(tenantId, kekId, `Vault Transit refused it (${answer.errors.join('; ')})`);
    }
    return Buffer.from(answer.body!.data.plaintext, 'base64');
  }

  async rewrapDek(from: string, to: string, tenantId: string, wrapped: Buffer): Promise<Buffer> {
    const row = { tenant_id: tenantId, wrapped_dek: wrapped };
    const ciphertext = this.values.ciphertext(row);
    if (this.values.version(ciphertext) !== this.version(from)) {
      throw new DekUnwrapError(tenantId, from, `it names another Transit key version than '${from}'`);
    }
    const [outcome] = await this.rewrapBatch([
      { ciphertext, context: this.values.context(row), key_version: this.version(to) },
    ]);
    if ('refused' in outcome!)
      throw new DekUnwrapError(tenantId, from, `Vault Transit refused it (${outcome.refused})`);
    return this.values.value(outcome!.ciphertext);
  }

  /**
   * One `rewrap` request for a batch: each item's new ciphertext (checked to name the version asked for), or the
   * reason Transit refused that item.
   */
  async rewrapBatch(items: readonly TransitItem[]): Promise<TransitOutcome[]> {
    if (items.length === 0) return [];
    const answer = await this.http.send<{ data?: { batch_results?: { ciphertext?: string; error?: string }[] } }>(
      'POST',
      this.api('rewrap'),
      { operation: 'transit rewrap', needs: ['update'], body: { batch_input: items }, expect: [400] },
    );
    const results = answer.body?.data?.batch_results;
    if (!results) {
      throw new KeyMaterialError(
        `${this.description} refused a rewrap of ${items.length} DEK(s): ${answer.errors.join('; ') || `status ${answer.status}`}`,
        this.description,
      );
    }
    return results.map((result, i): TransitOutcome => {
      if (result.error || !result.ciphertext) {
        const reason = result.error ?? 'no ciphertext';
        if (!REFUSED.test(reason))
          throw new KeyMaterialError(`${this.description}: rewrap: ${reason}`, this.description);
        return { refused: reason };
      }
      const version = this.values.version(result.ciphertext);
      if (version !== items[i]!.key_version) {
        throw new KeyMaterialError(
          `${this.description} rewrapped a DEK to version ${version}, not the ${items[i]!.key_version} asked for: not written`,
          this.description,
        );
      }
      return { ciphertext: result.ciphertext };
    });
  }

  /** The rewrap engine's crypto for this store: `rewrap` in batches, paced by REKEY_VAULT_TRANSIT_CONCURRENCY/_RATE. */
  rowCrypto(): TransitRowCrypto {
    this.crypto ??= new TransitRowCrypto(
      new RequestPacer(this.settings.limits),
      this.settings.batch,
      (kek) => this.versionFor(kek.kekId, kek.fingerprint),
      (items) => this.rewrapBatch(items),
    );
    return this.crypto;
  }

  /** Transit takes no DEK opened elsewhere: a keyspace moves in by a rotation between its own versions. */
  protected sealOpened(): Promise<Buffer> {
    return Promise.reject(refusedMoveIn(this.description));
  }

  protected importRows(): Promise<RewrapRowsResult> {
    return Promise.reject(refusedMoveIn(this.description));
  }

  /** A DEK made under the version without its plaintext (`datakey/wrapped`): the self-test's probe. */
  protected async probe(kek: RemoteKek, tenantId: string): Promise<Row> {
    const row = { tenant_id: tenantId };
    const made = await this.http.call<{ data: { ciphertext: string } }>('POST', this.api('datakey/wrapped'), {
      operation: 'transit datakey',
      needs: ['update'],
      body: { context: this.values.context(row), key_version: this.versionFor(kek.kekId, kek.fingerprint), bits: 256 },
    });
    return { ...row, wrapped_dek: this.values.value(made.data.ciphertext) };
  }

  // ---- Lifecycle ----

  private requireState(): TransitKey {
    if (!this.state) throw new KeyMaterialError(`${this.description} does not exist`, this.description);
    return this.state;
  }

  /**
   * A new key version: the keyspace's key made (derived, aes256-gcm96) for `v1`, else `rotate`. Idempotent: a KEK
   * whose version exists is there (a retry after a lost answer finds the version its first attempt made); only the
   * next version can be made.
   */
  protected async generate(kekId?: string, options: ProvisionOptions = {}): Promise<string> {
    // The key is the keyspace's by its owner record before a version is made (claimed now if nobody has).
    if (options.owner !== undefined)
      await this.ownerRecord.claim(options.owner, `make a version of ${this.description}`);
    await this.reload();
    const latest = this.state?.latest_version ?? 0;
    const id = kekId ?? kekIdOf(latest + 1);
    const version = versionOfId(id);
    if (version !== undefined && version <= latest) return id;
    if (version !== latest + 1) {
      throw new KeyMaterialError(
        `${this.description}: a Transit KEK is a key version, named v<version>; the next one is '${kekIdOf(latest + 1)}', not '${id}'`,
        this.description,
      );
    }
    if (this.state === undefined) {
      await this.http.send('POST', this.api('keys'), {
        operation: 'transit create key',
        needs: ['create', 'update'],
        body: { type: 'aes256-gcm96', derived: true },
      });
    } else {
      await this.http.send('POST', `${this.api('keys')}/rotate`, { operation: 'transit rotate', needs: ['update'] });
    }
    await this.reload();
    if (!this.has(id)) {
      throw new KeyMaterialError(
        `${this.description}: version ${version} was made but is not listed`,
        this.description,
      );
    }
    return id;
  }

  /**
   * The versions the registry recorded for this key whose fingerprints Vault can still show (those it decrypts with):
   * each must have the recorded creation time, else the key was made again under its name (or the registry is another
   * keyspace's), and nothing is changed.
   */
  private proveSameKey(registry: readonly RecordedKek[], step: string): void {
    const prefix = `${FINGERPRINT_PREFIX}${this.settings.mount}/${this.settings.key}:`;
    for (const record of registry) {
      if (!record.fingerprint.startsWith(prefix) || record.state === 'destroyed' || !this.has(record.kekId)) continue;
      if (record.fingerprint !== this.fingerprint(record.kekId)) {
        throw new KeyStoreRefusedError(
          `${this.description}: the registry recorded KEK '${record.kekId}' as ${record.fingerprint}, but Vault has ${this.fingerprint(record.kekId)}: the key was made again under its name, or another keyspace uses it. rekey does not ${step}`,
        );
      }
    }
  }

  /** The start of the fingerprint of every version of this key. */
  private get fingerprintPrefix(): string {
    return `${FINGERPRINT_PREFIX}${this.settings.mount}/${this.settings.key}:`;
  }

  /** The recorded KEKs of this key the registry still needs (not retired, not destroyed), by version. */
  private needed(registry: readonly RecordedKek[], except: string): { kekId: string; version: number }[] {
    const prefix = `${FINGERPRINT_PREFIX}${this.settings.mount}/${this.settings.key}:`;
    return registry
      .filter((r) => r.fingerprint.startsWith(prefix) && r.kekId !== except)
      .filter((r) => r.state !== 'retired' && r.state !== 'destroyed')
      .map((r) => ({ kekId: r.kekId, version: versionOfId(r.kekId) ?? 0 }));
  }

  /**
   * The keyspace the key belongs to (one key, one owner): its owner record, a KV v2 secret beside it (a Transit key
   * carries no metadata), claimed by the first keyspace to use it (adopt, at a rotation's first step). A key with no
   * record is refused here (KeyStoreRefusedError), before the keyring writes its registry: rekey does not retire,
   * restore or trim a key no keyspace has claimed.
   */
  async ownerOf(kekId: string): Promise<string> {
    const owner = await this.ownerRecord.ownerOf();
    if (owner === undefined) await this.ownerRecord.requireRecorded(`act on KEK '${kekId}'`);
    return owner!;
  }

  /** The keyspace the owner record names; undefined while there is none. */
  recordedOwner(): Promise<string | undefined> {
    return this.ownerRecord.ownerOf();
  }

  /**
   * The key becomes `keyspace`'s when no keyspace has it yet and the registry records one of its versions (by
   * fingerprint): a key from before owner records that the registry does not record may be another deployment's, and
   * is refused, naming the claim command (owner-rule.ts). A key that does not exist yet is recorded as this keyspace's
   * (its name reserved). Another keyspace's record is left as it is (the keyring refuses each step on its keys).
   */
  async adopt(keyspace: string, registry: readonly RecordedKek[] = []): Promise<void> {
    await this.reload();
    if (this.state === undefined) {
      await this.ownerRecord.record(keyspace);
      return;
    }
    if ('owner' in (await this.ownerRecord.state())) return;
    this.refuseUnrecorded(registry, keyspace);
    this.proveSameKey(registry, 'record this keyspace as its owner');
    await this.ownerRecord.record(keyspace);
  }

  /** An existing key without an owner record whose versions the registry does not record: refused (owner-rule.ts). */
  private refuseUnrecorded(registry: readonly RecordedKek[], keyspace: string | undefined): void {
    const versions = this.held().map((k) => ({ kekId: k.kekId!, fingerprint: k.fingerprint }));
    refuseUnclaimed(this.ownerScope, versions, registry, keyspace);
  }

  /** How the owner rule names this key: one owner record for all its versions. */
  private get ownerScope(): OwnerScope {
    return storeScope(
      this.description,
      'a Transit key of its own (REKEY_VAULT_TRANSIT_KEY naming one that does not exist yet)',
    );
  }

  /** An application's first seed: only from a key whose owner record names this keyspace (owner-rule.ts). */
  override async refuseSeed(kekId: string, keyspace: string): Promise<void> {
    await this.reload();
    const record = await this.ownerRecord.state();
    const owner = 'owner' in record ? record.owner : undefined;
    await refuseSeedUnlessOwned(this, this.ownerScope, kekId, keyspace, owner);
  }

  /**
   * The operator's claim of the key for `keyspace` (`rekey keys claim`), naming one version by KEK id and fingerprint:
   * the version must be there with that fingerprint; then the owner record is written if there is none. Another
   * keyspace's record is refused.
   */
  async claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'> {
    await this.reload();
    if (!this.has(kekId)) throw new UnknownKekError(kekId, this.description);
    if (this.fingerprint(kekId) !== fingerprint) {
      throw new KekFingerprintMismatchError(
        kekId,
        fingerprint,
        this.fingerprint(kekId),
        `KEK '${kekId}' in ${this.description} is ${this.fingerprint(kekId)}, not the ${fingerprint} given: rekey claims only the key named`,
      );
    }
    const before = await this.ownerRecord.state();
    const owner = 'owner' in before ? before.owner : await this.ownerRecord.record(keyspace);
    if (owner !== keyspace) {
      throw new KeyspaceMismatchError(
        `not claiming KEK '${kekId}': ${this.description} records keyspace ${owner} as its owner (${this.ownerRecord.name}), and this is keyspace ${keyspace}. Give this keyspace a Transit key of its own (REKEY_VAULT_TRANSIT_KEY)`,
      );
    }
    return 'owner' in before ? 'already' : 'claimed';
  }

  /** Transit encrypts with the latest version: the registry's promotion is the only mark. */
  promote(_from: string, _to: string, _registry: readonly RecordedKek[]): Promise<void> {
    return Promise.resolve();
  }

  /** Before a provision writes anything: the token's capabilities, and the key is the one the registry recorded. */
  async claim(_provisioning: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.http.requireCapabilities(this.capabilitiesNeeded(), `rekey's lifecycle on ${this.description}`);
    await this.reload();
    this.proveSameKey(registry, 'provision a KEK in it');
    // A key from before owner records gets no new version from a keyspace whose registry records none of its versions.
    if (this.state !== undefined && !('owner' in (await this.ownerRecord.state()))) {
      this.refuseUnrecorded(registry, undefined);
    }
  }

  /**
   * Raises `min_decryption_version` past the KEK: Vault keeps the version and refuses to decrypt or rewrap with it.
   * Transit retires a prefix of versions: proven first, every KEK of this key the registry still needs is a later
   * version, and the key is the one the registry recorded. Idempotent.
   */
  async retire(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    const state = this.requireState();
    const version = versionOfId(kekId);
    if (version === undefined) throw new UnknownKekError(kekId, this.description);
    if (state.min_decryption_version > version) return;
    this.proveSameKey(registry, `retire '${kekId}'`);
    await this.ownerRecord.requireRecorded(`retire '${kekId}'`);
    const recorded = registry.find((r) => r.kekId === kekId);
    if (recorded) this.versionFor(kekId, recorded.fingerprint);
    const blocking = this.needed(registry, kekId).filter((k) => k.version <= version);
    // Versions Vault still decrypts that no registry records (made before rekey met the key, by hand or by
    // auto_rotate_period): rows may be wrapped under them, and nothing proved otherwise. Raising the floor stops them.
    const unrecorded: string[] = [];
    for (let older = Math.max(1, state.min_decryption_version); older < version; older++) {
      if (!registry.some((r) => r.kekId === kekIdOf(older) && r.fingerprint.startsWith(this.fingerprintPrefix))) {
        unrecorded.push(kekIdOf(older));
      }
    }
    if (unrecorded.length > 0) {
      throw new KeyStoreRefusedError(
        `${this.description}: retiring '${kekId}' raises min_decryption_version to ${version + 1}, which would also stop ${unrecorded.map((id) => `'${id}'`).join(', ')}: version(s) Vault still decrypts that the registry does not record, so no proof says no row is wrapped under them. Not retired. If rows use them, rotate from each to the active KEK first (rekey rotate --from <id>); if none does, raise min_decryption_version past them yourself (vault write ${this.api('keys')}/config min_decryption_version=<n>), then run the step again`,
      );
    }
    if (blocking.length > 0 || version >= state.latest_version) {
      throw new KeyStoreRefusedError(
        `${this.description}: retiring '${kekId}' raises min_decryption_version to ${version + 1}, which would also stop ${blocking.length > 0 ? blocking.map((k) => `'${k.kekId}'`).join(', ') : 'the latest version'}, still needed: not retired. Retire the older KEKs first`,
      );
    }
    await this.configure({ min_decryption_version: version + 1 });
    await this.reload();
  }

  /**
   * Lowers `min_decryption_version` to the KEK again (versions between it and the old minimum become usable to
   * Vault as well; the registry keeps refusing those it retired), then proves the version is the registry's (else it
   * is raised back and refused).
   */
  async restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    const state = this.requireState();
    const version = versionOfId(kekId);
    if (version === undefined) throw new UnknownKekError(kekId, this.description);
    if (version < Math.max(1, state.min_available_version)) {
      throw new KeyMaterialError(`${this.description}: version ${version} was trimmed: nothing brings it back`, kekId);
    }
    const before = state.min_decryption_version;
    if (before > version) {
      await this.ownerRecord.requireRecorded(`restore '${kekId}'`);
      await this.configure({ min_decryption_version: version });
      await this.reload();
    }
    const recorded = registry.find((r) => r.kekId === kekId);
    try {
      if (recorded) this.versionFor(kekId, recorded.fingerprint);
    } catch (err) {
      if (before > version) await this.configure({ min_decryption_version: before });
      throw err;
    }
  }

  /**
   * `trim`s the versions up to the KEK's (their material removed for good). Proven first: the key is the one the
   * registry recorded (the fingerprints of the versions Vault still lists), the KEK is retired in Vault (below
   * `min_decryption_version`, as retire left it: one decryptable since may be in use again), and no KEK of this key
   * the registry has not destroyed (needed, restored, or retired within its window) is an older version. Idempotent.
   */
  async destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    await this.reload();
    const state = this.requireState();
    const version = versionOfId(kekId);
    if (version === undefined) throw new UnknownKekError(kekId, this.description);
    if (version < state.min_available_version) {
      return { destroyed: true, detail: `version ${version} of ${this.description} is already trimmed` };
    }
    this.proveSameKey(registry, `trim '${kekId}'`);
    await this.ownerRecord.requireRecorded(`trim '${kekId}'`);
    if (state.min_decryption_version <= version) {
      throw new KeyStoreRefusedError(
        `${this.description}: version ${version} (KEK '${kekId}') is decryptable again (min_decryption_version ${state.min_decryption_version}), but retire left it below: perhaps restored for a reader, and rekey does not trim it`,
      );
    }
    // Older KEKs still in their restore window (retired, not destroyed) would be trimmed with it: they go first.
    const prefix = `${FINGERPRINT_PREFIX}${this.settings.mount}/${this.settings.key}:`;
    const olderRetired = registry
      .filter((r) => r.fingerprint.startsWith(prefix) && r.kekId !== kekId && r.state === 'retired')
      .filter((r) => (versionOfId(r.kekId) ?? 0) < version)
      .map((r) => ({ kekId: r.kekId, version: versionOfId(r.kekId) ?? 0 }));
    const blocking = [...this.needed(registry, kekId).filter((k) => k.version <= version), ...olderRetired];
    if (blocking.length > 0) {
      throw new KeyStoreRefusedError(
        `${this.description}: trimming to version ${version + 1} would remove ${blocking.map((k) => `'${k.kekId}'`).join(', ')}, which the registry has not destroyed (still needed, or retired within its restore window): not trimmed. Those are destroyed first`,
      );
    }
    // trim needs min_available_version ≤ min_encryption_version, which Vault keeps ≥ min_decryption_version: the floor
    // is min_decryption_version (above the KEK, as retire left it), below every version rekey may encrypt with.
    if (state.min_encryption_version < state.min_decryption_version) {
      await this.configure({ min_encryption_version: state.min_decryption_version });
    }
    await this.http.send('POST', `${this.api('keys')}/trim`, {
      operation: 'transit trim',
      needs: ['update'],
      body: { min_available_version: version + 1 },
    });
    await this.reload();
    return {
      destroyed: true,
      detail: `versions up to ${version} of ${this.description} are trimmed (Transit trim: their material is removed for good)`,
    };
  }

  private async configure(body: Record<string, number>): Promise<void> {
    await this.http.send('POST', `${this.api('keys')}/config`, {
      operation: 'transit configure key',
      needs: ['update'],
      body,
    });
  }

  close(): void {
    this.crypto = undefined;
  }
}

/** REKEY_KEY_PROVIDER=vault-transit: the Transit key REKEY_VAULT_TRANSIT_KEY names. */
export const vaultTransitStore: ProcessStore<'vault-transit'> = {
  value: 'vault-transit',
  open: ({ env, onRequest }) => VaultTransitKeys.fromEnv(env, onRequest),
  reads: (env) => {
    if (!env.REKEY_VAULT_TRANSIT_KEY?.trim()) return [];
    const at = `${env.REKEY_VAULT_TRANSIT_MOUNT?.trim() || 'transit'}/keys/${env.REKEY_VAULT_TRANSIT_KEY.trim()}`;
    return [{ key: `vault-transit ${env.VAULT_ADDR ?? ''} ${at}`, what: `the Vault Transit key ${at}` }];
  },
};
