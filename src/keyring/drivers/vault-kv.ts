import { kekFingerprint } from '../../envelope/dek-wrapping';
import {
  refuseKeyBytes,
  type DestroyOutcome,
  type ProcessStore,
  type ProvisionOptions,
  type RecordedKek,
} from '../driver';
import { decodeKek, InMemoryKeys, KEK_ID_PATTERN, LocalKeysDriver, newKekId, newKekText } from '../local-keys';
import { adoptIfRecorded, claimByFingerprint, refuseSeedUnlessOwned, storeScope } from '../owner-rule';
import { VaultHttp, vaultPath, type VaultCapability, type VaultRequestListener } from '../vault-http';
import { KekFingerprintMismatchError, KeyMaterialError, KeyStoreRefusedError } from '../../errors';

/** The secret's custom_metadata key naming a KEK's version: `rekey:kek:v2` = `"3"`. */
export const KV_KEK_NAME = 'rekey:kek:';
/** The secret's custom_metadata key naming the current KEK (the store's mark; the registry decides what is active). */
export const KV_CURRENT = 'rekey:current';
/** The secret's custom_metadata key naming the keyspace its KEKs belong to (`<database id>/<schema.table>`). */
export const KV_KEYSPACE = 'rekey:keyspace';
/** The field of a version's data beside `value` that says which KEK rekey wrote it for (a lost answer is found). */
export const KV_KEK_FIELD = 'rekey_kek';
/** Vault's own default of kept versions (a mount's `max_versions` of 0). */
const VAULT_DEFAULT_MAX_VERSIONS = 10;

interface KvMetadata {
  current_version: number;
  max_versions: number;
  delete_version_after?: string;
  custom_metadata: Record<string, string> | null;
  versions: Record<string, { deletion_time: string; destroyed: boolean }>;
}

type VersionState = 'live' | 'deleted' | 'destroyed';

interface KvKek {
  version: number;
  state: VersionState;
  /** Read as the secret's latest version without a rekey name (written by hand or by DevSkyy's tooling). */
  unnamed?: boolean;
}

export interface KvOptions extends ProvisionOptions {
  /** The keyspace the KEK belongs to, recorded as the secret's `rekey:keyspace` when it has none. */
  owner?: string;
}

/**
 * KEKs held as versions of one Vault KV v2 secret per keyspace, in DevSkyy's layout: the secret at `<mount>/<path>`
 * (REKEY_VAULT_KV_MOUNT, `secret` by default; REKEY_VAULT_KV_PATH), each version's data `{"value": "<KEK in
 * base64url>"}` (and `rekey_kek`, the id rekey wrote it for). Versions are never overwritten: every write is a
 * check-and-set on the version rekey last read. The secret's custom_metadata names the versions (`rekey:kek:<id>` =
 * version), the current KEK (`rekey:current`) and the keyspace the secret belongs to (`rekey:keyspace`). The
 * lifecycle is KV's own: retire soft-deletes the version (`delete`: unreadable, kept), restore undeletes it, destroy
 * destroys it (`destroy`: the data is removed for good).
 *
 * The secret's latest version without a rekey name (a secret written with `vault kv put <path> value=…`) is read as
 * KEK `kv-v<version>`, and named so before anything moves, when its key is one the registry records.
 */
export class VaultKvKeys extends LocalKeysDriver {
  readonly description: string;
  readonly makesKeks = true;
  private keks = new Map<string, KvKek>();
  private metadata: KvMetadata | undefined;

  constructor(
    readonly http: VaultHttp,
    readonly mount: string,
    readonly path: string,
  ) {
    const description = `Vault KV secret '${mount}/${path}' (${http.description})`;
    super(description);
    this.description = description;
  }

  /** From VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE, REKEY_VAULT_KV_MOUNT and REKEY_VAULT_KV_PATH. Nothing is read yet. */
  static fromEnv(env: NodeJS.ProcessEnv, onRequest?: VaultRequestListener): VaultKvKeys {
    const rawPath = env.REKEY_VAULT_KV_PATH?.trim();
    if (!rawPath) {
      throw new KeyMaterialError(
        "REKEY_VAULT_KV_PATH must name the KV v2 secret that holds the keyspace's KEKs, within its mount (e.g. encryption/master_key for secret/encryption/master_key)",
        'REKEY_VAULT_KV_PATH',
      );
    }
    const mount = vaultPath(env.REKEY_VAULT_KV_MOUNT?.trim() || 'secret', 'REKEY_VAULT_KV_MOUNT', 'secret');
    const path = vaultPath(rawPath, 'REKEY_VAULT_KV_PATH', 'encryption/master_key');
    return new VaultKvKeys(VaultHttp.fromEnv(env, onRequest), mount, path);
  }

  private api(kind: 'data' | 'metadata' | 'delete' | 'undelete' | 'destroy'): string {
    return `${this.mount}/${kind}/${this.path}`;
  }

  /** Every capability the store's lifecycle needs, by path: the policy in docs/06-key-stores.md grants exactly these. */
  capabilitiesNeeded(): Record<string, VaultCapability[]> {
    return {
      [this.api('data')]: ['create', 'read', 'update'],
      [this.api('metadata')]: ['read', 'patch'],
      [this.api('delete')]: ['update'],
      [this.api('undelete')]: ['update'],
      [this.api('destroy')]: ['update'],
    };
  }

  private async readMetadata(): Promise<KvMetadata | undefined> {
    const answer = await this.http.send<{ data: KvMetadata }>('GET', this.api('metadata'), {
      operation: 'kv read metadata',
      needs: ['read'],
      expect: [404],
    });
    return answer.status === 404 ? undefined : answer.body!.data;
  }

  /** A version's data; undefined when it is deleted, destroyed or not there. */
  private async readVersion(version: number): Promise<Record<string, unknown> | undefined> {
    const answer = await this.http.send<{ data: { data: Record<string, unknown> | null } }>(
      'GET',
      `${this.api('data')}?version=${version}`,
      { operation: 'kv read', needs: ['read'], expect: [404] },
    );
    return answer.status === 404 ? undefined : (answer.body?.data.data ?? undefined);
  }

  private stateOf(metadata: KvMetadata, version: number): VersionState {
    const entry = metadata.versions[String(version)];
    if (!entry || entry.destroyed) return 'destroyed';
    return entry.deletion_time ? 'deleted' : 'live';
  }

  /** The KEK names of the secret's custom_metadata: id → version. */
  private names(metadata: KvMetadata): Map<string, number> {
    const names = new Map<string, number>();
    const byVersion = new Map<number, string>();
    for (const [key, value] of Object.entries(metadata.custom_metadata ?? {})) {
      if (!key.startsWith(KV_KEK_NAME)) continue;
      const kekId = key.slice(KV_KEK_NAME.length);
      const version = Number(value);
      if (!KEK_ID_PATTERN.test(kekId) || !Number.isInteger(version) || version < 1) {
        throw new KeyMaterialError(
          `${this.description}: custom_metadata ${key}=${value} is not a KEK name rekey wrote (an id and a version number): remove it`,
          this.description,
        );
      }
      const other = byVersion.get(version);
      if (other !== undefined) {
        throw new KeyMaterialError(
          `${this.description}: version ${version} is named both '${other}' and '${kekId}': a version holds one KEK, remove one name`,
          this.description,
        );
      }
      byVersion.set(version, kekId);
      names.set(kekId, version);
    }
    return names;
  }

  private key(data: Record<string, unknown>, where: string): Buffer {
    if (typeof data.value !== 'string') {
      throw new KeyMaterialError(`${where} has no "value" string: a KEK is stored as {"value": "<base64url>"}`, where);
    }
    return decodeKek(data.value, where);
  }

  protected async load(): Promise<InMemoryKeys> {
    const metadata = await this.readMetadata();
    const keys = new InMemoryKeys(this.description);
    const keks = new Map<string, KvKek>();
    let current: string | undefined;
    try {
      if (metadata) {
        const names = this.names(metadata);
        for (const [kekId, version] of names) {
          const state = this.stateOf(metadata, version);
          keks.set(kekId, { version, state });
          if (state !== 'live') continue;
          const data = await this.readVersion(version);
          const where = `${this.description} version ${version} (KEK '${kekId}')`;
          if (!data) throw new KeyMaterialError(`${where} is named but Vault returns no data for it`, where);
          keys.add(kekId, this.key(data, where), where);
        }
        const latest = metadata.current_version;
        const named = [...names.values()].includes(latest);
        if (latest > 0 && !named && this.stateOf(metadata, latest) === 'live') {
          // A hand-made latest version: the one DevSkyy's application reads. Not a KEK if its value is none.
          const data = await this.readVersion(latest);
          const where = `${this.description} version ${latest} (unnamed)`;
          const kekId = `kv-v${latest}`;
          if (data && typeof data.value === 'string' && !names.has(kekId) && data[KV_KEK_FIELD] === undefined) {
            try {
              keys.add(kekId, decodeKek(data.value, where), where);
              keks.set(kekId, { version: latest, state: 'live', unnamed: true });
            } catch (err) {
              if (!(err instanceof KeyMaterialError)) throw err;
            }
          }
        }
        const marked = metadata.custom_metadata?.[KV_CURRENT];
        if (marked !== undefined && keys.has(marked)) current = marked;
        else if (marked === undefined && keks.get(`kv-v${latest}`)?.unnamed) current = `kv-v${latest}`;
      }
    } catch (err) {
      keys.clear();
      throw err;
    }
    this.metadata = metadata;
    this.keks = keks;
    this.configuredCurrentKekId = current;
    return keys;
  }

  /** Every KEK the secret names, retired and destroyed ones too (a destroyed name is never given again). */
  namedIds(): string[] {
    return [...this.keks.keys()].sort();
  }

  /** Sets (or, with null, removes) custom_metadata entries, leaving the others as they are (a merge patch). */
  private async patchMetadata(entries: Record<string, string | null>): Promise<void> {
    await this.http.send('PATCH', this.api('metadata'), {
      operation: 'kv name',
      needs: ['patch'],
      body: { custom_metadata: entries },
      contentType: 'application/merge-patch+json',
    });
  }

  async provision(kekId: string, options: ProvisionOptions): Promise<void> {
    await this.generate(kekId, options);
  }

  /**
   * A new random KEK as a new version of the secret, written with check-and-set on the version last read (so it never
   * overwrites, and a concurrent writer makes this attempt fail and retry), then named in custom_metadata. The first
   * KEK of a secret is also marked current. Idempotent: a retry finds a version an earlier attempt wrote but did not
   * name (its answer lost) by its `rekey_kek` field, and names that one.
   */
  private async generate(kekId?: string, options: KvOptions = {}): Promise<string> {
    await this.reload();
    const id = newKekId(kekId, [...this.keks.keys()], this.description);
    const existing = this.keks.get(id);
    if (existing && !existing.unnamed) {
      if (existing.state !== 'live') {
        throw new KeyMaterialError(
          `${this.description}: KEK '${id}' names version ${existing.version}, which is ${existing.state}: choose another id`,
          this.description,
        );
      }
      return id;
    }
    const metadata = this.metadata;
    let version = metadata ? await this.writtenFor(id, metadata) : undefined;
    if (version === undefined) {
      this.requireRoomFor(metadata && (await this.ownLimit(metadata)));
      const value = newKekText();
      const written = await this.http.send<{ data: { version: number } }>('POST', this.api('data'), {
        operation: 'kv write',
        needs: metadata ? ['update'] : ['create'],
        body: { options: { cas: metadata?.current_version ?? 0 }, data: { value, [KV_KEK_FIELD]: id } },
        expect: [400],
      });
      if (written.status === 400) {
        // Retried by Temporal: the next attempt reads the secret again.
        throw new Error(
          `${this.description}: another writer added a version since rekey read the secret (check-and-set on version ${metadata?.current_version ?? 0} refused: ${written.errors.join('; ')}); nothing was overwritten`,
        );
      }
      version = written.body!.data.version;
    }
    const owner = this.metadata?.custom_metadata?.[KV_KEYSPACE];
    await this.patchMetadata({
      [`${KV_KEK_NAME}${id}`]: String(version),
      ...(this.configuredCurrentKekId === undefined && this.metadata?.custom_metadata?.[KV_CURRENT] === undefined
        ? { [KV_CURRENT]: id }
        : {}),
      ...(options.owner !== undefined && owner === undefined ? { [KV_KEYSPACE]: options.owner } : {}),
    });
    await this.reload();
    if (!this.has(id)) {
      throw new KeyMaterialError(`${this.description}: KEK '${id}' was written but is not readable`, this.description);
    }
    return id;
  }

  /** A live version newer than every named one whose data says rekey wrote it for `kekId` (a lost answer). */
  private async writtenFor(kekId: string, metadata: KvMetadata): Promise<number | undefined> {
    const named = new Set(this.names(metadata).values());
    const newest = Math.max(0, ...named);
    for (let version = metadata.current_version; version > newest; version--) {
      if (this.stateOf(metadata, version) !== 'live') continue;
      const data = await this.readVersion(version);
      if (data?.[KV_KEK_FIELD] === kekId) return version;
    }
    return undefined;
  }

  /**
   * A secret that sets no `max_versions` of its own keeps as many as its mount's configuration says, which rekey's
   * token cannot read, and Vault destroys the oldest beyond that on the next write. So before a write the secret gets a
   * limit of its own (which Vault applies over the mount's) that keeps every version written so far and the new one,
   * at least Vault's default: the check below then counts with the limit Vault applies.
   */
  private async ownLimit(metadata: KvMetadata): Promise<KvMetadata> {
    if (metadata.max_versions > 0) return metadata;
    const limit = Math.max(VAULT_DEFAULT_MAX_VERSIONS, metadata.current_version + 1);
    await this.http.send('PATCH', this.api('metadata'), {
      operation: 'kv keep versions',
      needs: ['patch'],
      body: { max_versions: limit },
      contentType: 'application/merge-patch+json',
    });
    return { ...metadata, max_versions: limit };
  }

  /**
   * Vault keeps `max_versions` versions of a secret (the secret's own, else the mount's, else 10) and removes the
   * oldest for good on the next write: a write that would remove a version holding a KEK not yet destroyed is refused.
   */
  private requireRoomFor(metadata: KvMetadata | undefined): void {
    if (!metadata) return;
    const kept = metadata.max_versions > 0 ? metadata.max_versions : VAULT_DEFAULT_MAX_VERSIONS;
    const oldestKept = metadata.current_version + 1 - kept + 1;
    const lost = [...this.keks]
      .filter(([, kek]) => kek.state !== 'destroyed' && kek.version < oldestKept)
      .map(([kekId, kek]) => `'${kekId}' (version ${kek.version})`);
    if (lost.length === 0) return;
    throw new KeyStoreRefusedError(
      `${this.description} keeps ${kept} versions: writing version ${metadata.current_version + 1} would make Vault remove KEK ${lost.join(', ')} for good. Raise the secret's limit first (vault kv metadata put -max-versions=100 ${this.mount}/${this.path}), then run the step again`,
    );
  }

  /**
   * Before a provision writes anything: the token holds every capability the lifecycle needs; Vault is not set to
   * soft-delete versions on its own (`delete_version_after`); every KEK the secret names that the registry records
   * holds the registry's key; and the unnamed latest version, if the registry records its key, is named now.
   */
  async claim(_provisioning: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.http.requireCapabilities(this.capabilitiesNeeded(), `rekey's lifecycle on ${this.description}`);
    await this.reload();
    const after = this.metadata?.delete_version_after;
    if (after !== undefined && after !== '' && after !== '0s') {
      throw new KeyStoreRefusedError(
        `${this.description} has delete_version_after=${after}: Vault would soft-delete KEK versions on its own, whatever the registry needs. Set it to 0s (vault kv metadata put -delete-version-after=0s ${this.mount}/${this.path}) and run the step again`,
      );
    }
    for (const [kekId, kek] of this.keks) {
      if (kek.state !== 'live' || kek.unnamed) continue;
      const recorded = registry.find((r) => r.kekId === kekId);
      if (recorded && recorded.state !== 'destroyed' && recorded.fingerprint !== this.fingerprint(kekId)) {
        throw new KekFingerprintMismatchError(kekId, recorded.fingerprint, this.fingerprint(kekId));
      }
    }
    // A secret from before owner records gets no new version from a keyspace whose registry records none of its keys.
    if (this.metadata !== undefined && this.metadata.custom_metadata?.[KV_KEYSPACE] === undefined) {
      await adoptIfRecorded(this, undefined, registry, this.ownSecret, () => Promise.resolve());
    }
    await this.nameUnnamed(registry);
  }

  /** The unnamed latest version gets the registry's name for its key (if recorded), so no later write hides it. */
  private async nameUnnamed(registry: readonly RecordedKek[]): Promise<void> {
    for (const [kekId, kek] of this.keks) {
      if (!kek.unnamed) continue;
      const record = this.recordOfUnnamed(kekId, registry, (id) => this.keks.has(id));
      if (!record) continue;
      await this.patchMetadata({
        [`${KV_KEK_NAME}${record.kekId}`]: String(kek.version),
        ...(this.metadata?.custom_metadata?.[KV_CURRENT] === undefined && this.configuredCurrentKekId === kekId
          ? { [KV_CURRENT]: record.kekId }
          : {}),
      });
      await this.reload();
      return;
    }
  }

  /** The live version named `kekId` holds the key the registry recorded for it; refused otherwise. */
  private requireRecorded(kekId: string, registry: readonly RecordedKek[]): KvKek {
    const kek = this.keks.get(kekId);
    if (!kek || kek.state !== 'live') {
      throw new KeyMaterialError(
        `${this.description} holds no readable KEK '${kekId}'${kek ? ` (version ${kek.version} is ${kek.state})` : ''}`,
        this.description,
      );
    }
    this.requireRecordedKey(kekId, registry);
    return kek;
  }

  /**
   * Marks `to` current (`rekey:current`), after the registry promoted it. Proven first: `to`'s version holds the key
   * the registry recorded, and the mark is on `from` (or on none, or on `to` already): anything else was moved
   * behind the registry's back, and is refused.
   */
  async promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    await this.nameUnnamed(registry);
    this.requireRecorded(to, registry);
    const marked = this.metadata?.custom_metadata?.[KV_CURRENT];
    if (marked === to) return;
    if (marked !== undefined && marked !== from) {
      throw new KeyStoreRefusedError(
        `${this.description}: ${KV_CURRENT} is '${marked}', neither '${from}' nor '${to}': someone else changed the secret's custom_metadata. rekey does not move it; set it to '${from}' (vault kv metadata patch -custom-metadata=${KV_CURRENT}=${from} ${this.mount}/${this.path}) and run the step again`,
      );
    }
    await this.patchMetadata({ [KV_CURRENT]: to });
    this.configuredCurrentKekId = to;
  }

  /**
   * Soft-deletes the KEK's version (KV `delete`): unreadable to every reader, its data kept for a restore. Proven
   * first: the version holds the key the registry recorded, and it is not the current one. Idempotent.
   */
  async retire(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    const kek = this.keks.get(kekId);
    if (kek?.state === 'deleted') return;
    const live = this.requireRecorded(kekId, registry);
    if (this.metadata?.custom_metadata?.[KV_CURRENT] === kekId) {
      throw new KeyMaterialError(
        `${this.description}: KEK '${kekId}' is marked current (${KV_CURRENT}); promote another KEK first`,
        this.description,
      );
    }
    await this.versionsCall('delete', live.version);
    await this.reload();
  }

  /** Undeletes the KEK's version (KV `undelete`), then proves it holds the registry's key (else deletes it again). */
  async restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    const kek = this.keks.get(kekId);
    if (!kek) throw new KeyMaterialError(`${this.description} names no KEK '${kekId}'`, this.description);
    if (kek.state === 'destroyed') {
      throw new KeyMaterialError(
        `${this.description}: version ${kek.version} (KEK '${kekId}') is destroyed: nothing can bring it back`,
        this.description,
      );
    }
    if (kek.state === 'deleted') {
      await this.versionsCall('undelete', kek.version);
      await this.reload();
    }
    try {
      this.requireRecorded(kekId, registry);
    } catch (err) {
      if (kek.state === 'deleted') await this.versionsCall('delete', kek.version);
      throw err;
    }
  }

  /**
   * Destroys the KEK's version (KV `destroy`: its data removed for good). Proven first, on the version's own bytes
   * (undeleted for the reading, and deleted again if the proof fails): it holds the key the registry recorded for
   * `kekId`, no other KEK the registry still needs is that key, and it is not the current one. Idempotent.
   */
  async destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    await this.reload();
    const kek = this.keks.get(kekId);
    if (!kek) return { destroyed: true, detail: `${this.description} names no KEK '${kekId}'` };
    const where = `version ${kek.version} of ${this.description}`;
    if (kek.state === 'destroyed') return { destroyed: true, detail: `${where} is already destroyed` };
    if (this.metadata?.custom_metadata?.[KV_CURRENT] === kekId) {
      throw new KeyMaterialError(`${this.description}: KEK '${kekId}' is marked current: not destroyed`, where);
    }
    const recorded = registry.find((r) => r.kekId === kekId);
    if (!recorded) throw new KeyMaterialError(`the registry records no KEK '${kekId}': not destroyed`, where);
    if (kek.state === 'deleted') await this.versionsCall('undelete', kek.version);
    let fingerprint: string | undefined;
    try {
      const data = await this.readVersion(kek.version);
      if (data) {
        const key = this.key(data, where);
        fingerprint = kekFingerprint(key);
        key.fill(0);
      }
    } finally {
      if (kek.state === 'deleted') await this.versionsCall('delete', kek.version);
    }
    if (fingerprint !== recorded.fingerprint) {
      throw new KeyStoreRefusedError(
        `${where} (KEK '${kekId}') holds ${fingerprint ? `the key ${fingerprint}` : 'no readable key'}, not the key the registry recorded (${recorded.fingerprint}): not destroyed`,
      );
    }
    this.refuseSharedKey(where, kekId, fingerprint, registry);
    await this.versionsCall('destroy', kek.version);
    await this.reload();
    return { destroyed: true, detail: `${where} is destroyed (KV destroy: its data is removed for good)` };
  }

  private async versionsCall(kind: 'delete' | 'undelete' | 'destroy', version: number): Promise<void> {
    await this.http.send('POST', this.api(kind), {
      operation: `kv ${kind}`,
      needs: ['update'],
      body: { versions: [version] },
    });
  }

  /** The keyspace the secret belongs to: its custom_metadata `rekey:keyspace` (one secret, one owner). */
  async ownerOf(_kekId?: string): Promise<string | undefined> {
    return (await this.readMetadata())?.custom_metadata?.[KV_KEYSPACE];
  }

  /** What a keyspace that does not use this secret configures instead, for refusals. */
  private get ownSecret(): string {
    return 'a secret of its own (REKEY_VAULT_KV_PATH naming one that does not exist yet)';
  }

  /** An application's first seed: only from a secret whose owner record names this keyspace (owner-rule.ts). */
  override async refuseSeed(kekId: string, keyspace: string): Promise<void> {
    await this.reload();
    const owner = await this.ownerOf(kekId);
    await refuseSeedUnlessOwned(this, storeScope(this.description, this.ownSecret), kekId, keyspace, owner);
  }

  /**
   * The secret becomes `keyspace`'s when it records no owner and the registry records one of its keys (owner-rule.ts):
   * a secret from before owner records whose keys the registry does not record (DevSkyy's default path, read by
   * another deployment) is refused, naming the claim command. No secret yet: its first KEK records the owner.
   */
  async adopt(keyspace: string, registry: readonly RecordedKek[] = []): Promise<void> {
    await this.reload();
    if (this.metadata === undefined || this.metadata.custom_metadata?.[KV_KEYSPACE] !== undefined) return;
    await adoptIfRecorded(this, keyspace, registry, this.ownSecret, () =>
      this.patchMetadata({ [KV_KEYSPACE]: keyspace }),
    );
  }

  /** `rekey keys claim`: the secret becomes `keyspace`'s, named by one of its KEKs and that KEK's fingerprint. */
  /** Takes no key bytes: `rekey keys import` is refused, saying where to import. */
  importKek(_kekId: string, _key: Buffer, _options: { current: boolean }): Promise<'added' | 'present'> {
    return refuseKeyBytes(this.description);
  }

  claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'> {
    return claimByFingerprint(this, kekId, fingerprint, keyspace, this.ownSecret, () =>
      this.patchMetadata({ [KV_KEYSPACE]: keyspace }),
    );
  }
}

/** REKEY_KEY_PROVIDER=vault: the KV v2 secret REKEY_VAULT_KV_PATH names; `auto` picks it when VAULT_ADDR is set. */
export const vaultKvStore: ProcessStore<'vault'> = {
  value: 'vault',
  auto: {
    order: 2,
    variables: ['VAULT_ADDR'],
    why: (env) => (env.VAULT_ADDR?.trim() ? 'VAULT_ADDR is set' : undefined),
  },
  open: ({ env, onRequest }) => VaultKvKeys.fromEnv(env, onRequest),
  reads: (env) => {
    if (!env.REKEY_VAULT_KV_PATH?.trim()) return [];
    const at = `${env.REKEY_VAULT_KV_MOUNT?.trim() || 'secret'}/${env.REKEY_VAULT_KV_PATH.trim()}`;
    return [{ key: `vault-kv ${env.VAULT_ADDR ?? ''} ${at}`, what: `the Vault KV v2 secret ${at}` }];
  },
};
