import { createHash } from 'node:crypto';
import {
  CreateSecretCommand,
  DescribeSecretCommand,
  GetSecretValueCommand,
  PutSecretValueCommand,
  SecretsManagerClient,
  TagResourceCommand,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import { kekFingerprint } from '../../envelope/dek-wrapping';
import { awsCall, awsClientConfig, awsFind, awsRegion } from '../aws';
import type { DestroyOutcome, ProcessStore, ProvisionOptions, RecordedKek } from '../driver';
import { adoptIfRecorded, claimByFingerprint, refuseSeedUnlessOwned, storeScope } from '../owner-rule';
import { decodeKek, InMemoryKeys, LocalKeysDriver, newKekId, newKekText } from '../local-keys';
import { KekFingerprintMismatchError, KeyMaterialError, KeyStoreRefusedError } from '../../errors';

/** The staging label that names a version's KEK while it may be used: `rekey-kek-v2`. */
export const KEK_LABEL = 'rekey-kek-';
/** The label that names a retired KEK's version: kept (not deprecated) until it is destroyed. */
export const RETIRED_LABEL = 'rekey-retired-';
/** The secret's tag naming the keyspace its KEKs belong to (`<database id>/<schema.table>`). */
export const KEYSPACE_TAG = 'rekey:keyspace';

const CURRENT = 'AWSCURRENT';
const PENDING = 'AWSPENDING';
const PREVIOUS = 'AWSPREVIOUS';

/**
 * The ClientRequestToken (and so the VersionId) of a KEK's version: derived from the secret and the KEK id, so a
 * provision that is retried (an activity that timed out after AWS stored the value) names the same version and
 * never creates a second one.
 */
export function versionToken(secretId: string, kekId: string): string {
  const hex = createHash('sha256').update(`rekey-kek-version\0${secretId}\0${kekId}`).digest('hex');
  // UUID layout (version 8, "custom"), 36 characters: within the API's 32-64.
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

interface Version {
  versionId: string;
  stages: string[];
  /** Read without a rekey label (AWSCURRENT or AWSPREVIOUS alone): its KEK id is its VersionId until it is labelled. */
  unlabelled?: boolean;
}

/** The KEK id a version's labels give it (usable or retired); undefined for a version rekey does not name. */
function kekIdOf(stages: readonly string[]): string | undefined {
  for (const stage of stages) {
    if (stage.startsWith(KEK_LABEL)) return stage.slice(KEK_LABEL.length);
    if (stage.startsWith(RETIRED_LABEL)) return stage.slice(RETIRED_LABEL.length);
  }
  return undefined;
}

/**
 * Each version's stages once AWSCURRENT has moved to `target` (AWS moves AWSPREVIOUS, wherever it was, to the version
 * AWSCURRENT left) and AWSPENDING has left it: what a promotion leaves, worked out before it is made.
 */
export function stagesAfterPromotion(
  versions: ReadonlyMap<string, readonly string[]>,
  target: string,
): Map<string, string[]> {
  const after = new Map([...versions].map(([versionId, stages]) => [versionId, [...stages]]));
  const holder = [...versions].find(([, stages]) => stages.includes(CURRENT))?.[0];
  const without = (stages: string[], stage: string) => stages.filter((s) => s !== stage);
  if (holder !== target) {
    for (const [versionId, stages] of after) {
      let next = without(stages, CURRENT);
      if (holder !== undefined) next = without(next, PREVIOUS);
      if (versionId === holder) next.push(PREVIOUS);
      if (versionId === target) next.push(CURRENT);
      after.set(versionId, next);
    }
  }
  after.set(target, without(after.get(target) ?? [], PENDING));
  return after;
}

/**
 * The versions of `needed` that a promotion to `target` would leave without a rekey label: AWS deletes a version
 * with no label at all in its own time, and rekey reads only versions it can name.
 */
export function unlabelledByPromotion(
  versions: ReadonlyMap<string, readonly string[]>,
  target: string,
  needed: ReadonlySet<string>,
): string[] {
  return [...stagesAfterPromotion(versions, target)]
    .filter(([versionId, stages]) => needed.has(versionId) && kekIdOf(stages) === undefined)
    .map(([versionId]) => versionId);
}

/**
 * KEKs held as versions of one AWS Secrets Manager secret per keyspace, each version's value a KEK in base64url (as
 * in the env provider), named by a staging label of rekey's own (`rekey-kek-<id>`). The store's stages follow the
 * KEK lifecycle as AWS's rotation steps do: a provisioned KEK is AWSPENDING, the active one AWSCURRENT, the one it
 * replaced AWSPREVIOUS (decrypt-only), and a retired one carries `rekey-retired-<id>` instead of its name, so the
 * version keeps a label (a version without one is deprecated, and AWS may delete it) until it is destroyed.
 *
 * The versions carrying AWSCURRENT and AWSPREVIOUS are read even without a rekey label (a secret created by hand or
 * rotated by the application's own tooling): the KEK id of such a version is its VersionId. Before anything moves
 * (a provision's `claim`, a promotion), rekey labels each one its registry records with the registry's name for it,
 * so that no promotion can take its last label; other unlabelled versions are not rekey's and are left alone.
 */
export class SecretsManagerKeys extends LocalKeysDriver {
  readonly description: string;
  readonly makesKeks = true;
  private versions = new Map<string, Version>();
  /** Every version's stages at the last read, by VersionId, those rekey does not read included. */
  private stages = new Map<string, string[]>();
  /** Whether the secret existed at the last read (the first KEK creates it). */
  private secretExists = false;

  constructor(
    readonly secretId: string,
    private readonly client: SecretsManagerClient,
  ) {
    const description = `AWS Secrets Manager secret '${secretId}'`;
    super(description);
    this.description = description;
  }

  /** From REKEY_AWS_SECRET_ID and the AWS settings of `env`. Nothing is read until `reload`. */
  static fromEnv(env: NodeJS.ProcessEnv): SecretsManagerKeys {
    const secretId = env.REKEY_AWS_SECRET_ID?.trim();
    if (!secretId) {
      throw new KeyMaterialError(
        'REKEY_AWS_SECRET_ID must name the Secrets Manager secret that holds the KEKs (its name or ARN, e.g. rekey/kek)',
        'REKEY_AWS_SECRET_ID',
      );
    }
    return new SecretsManagerKeys(secretId, new SecretsManagerClient(awsClientConfig(env, 'SECRETS_MANAGER')));
  }

  private call<T>(action: string, run: () => Promise<T>): Promise<T> {
    return awsCall(this.description, `secretsmanager:${action}`, run);
  }

  /**
   * Every version rekey names (and the AWSCURRENT and AWSPREVIOUS ones), by KEK id, from DescribeSecret's map of
   * versions to stages (deprecated versions, which carry no stage, are not in it); undefined when the secret does not
   * exist. `this.stages` gets every version's stages.
   */
  private async listVersions(): Promise<Map<string, Version> | undefined> {
    const described = await awsFind(this.description, 'secretsmanager:DescribeSecret', () =>
      this.client.send(new DescribeSecretCommand({ SecretId: this.secretId })),
    );
    if (described === undefined) return undefined;
    if (described.DeletedDate !== undefined) {
      throw new KeyMaterialError(
        `${this.description} is scheduled for deletion (${described.DeletedDate.toISOString()}): restore it with 'aws secretsmanager restore-secret' before rekey uses it`,
        this.description,
      );
    }
    const versions = new Map<string, Version>();
    this.stages = new Map(Object.entries(described.VersionIdsToStages ?? {}));
    for (const [versionId, stages] of this.stages) {
      const named = kekIdOf(stages);
      const unlabelled = named === undefined && (stages.includes(CURRENT) || stages.includes(PREVIOUS));
      const kekId = named ?? (unlabelled ? versionId : undefined);
      if (kekId === undefined) continue;
      if (versions.has(kekId)) {
        throw new KeyMaterialError(
          `${this.description}: two versions are labelled for KEK '${kekId}'; remove one label`,
          this.description,
        );
      }
      versions.set(kekId, { versionId, stages, ...(unlabelled && { unlabelled }) });
    }
    return versions;
  }

  protected async load(): Promise<InMemoryKeys> {
    const listed = await this.listVersions();
    const versions = listed ?? new Map<string, Version>();
    const keys = new InMemoryKeys(this.description);
    let current: string | undefined;
    try {
      for (const [kekId, version] of versions) {
        const value = await this.call('GetSecretValue', () =>
          this.client.send(new GetSecretValueCommand({ SecretId: this.secretId, VersionId: version.versionId })),
        );
        const where = `${this.description} version ${version.versionId} (KEK '${kekId}')`;
        let key: Buffer;
        try {
          if (value.SecretString === undefined) {
            throw new KeyMaterialError(`${where} holds binary data: a KEK is stored as a base64url string`, where);
          }
          key = decodeKek(value.SecretString, where);
        } catch (err) {
          // An unlabelled AWSPREVIOUS that holds no KEK is what the secret held before its KEKs: not rekey's.
          if (version.unlabelled && !version.stages.includes(CURRENT) && err instanceof KeyMaterialError) {
            versions.delete(kekId);
            continue;
          }
          throw err;
        }
        keys.add(kekId, key, where);
        if (version.stages.includes(CURRENT)) current = kekId;
      }
    } catch (err) {
      keys.clear();
      throw err;
    }
    this.versions = versions;
    this.secretExists = listed !== undefined;
    this.configuredCurrentKekId = current;
    return keys;
  }

  async provision(kekId: string, options: ProvisionOptions): Promise<void> {
    await this.generate(kekId, options);
  }

  /**
   * A new random KEK as a new version: AWSPENDING with its rekey label, or, in a secret that does not exist yet,
   * the secret's first version (AWSCURRENT). Its VersionId comes from the KEK id, and a version already there under
   * that id is used as it is: a retried provision creates nothing.
   */
  private async generate(kekId?: string, options: ProvisionOptions = {}): Promise<string> {
    await this.reload();
    const id = newKekId(kekId, [...this.versions.keys()], this.description);
    if (this.versions.has(id)) return id;
    const token = versionToken(this.secretId, id);
    const existing = await this.versionById(token);
    if (existing === undefined) {
      await this.writeVersion(token, newKekText(), `${KEK_LABEL}${id}`, { pending: true, owner: options.owner });
    } else if (!existing.includes(`${KEK_LABEL}${id}`)) {
      // The value was stored, the label was not (a crash in between): label it now.
      await this.moveLabel(`${KEK_LABEL}${id}`, { to: token });
    }
    await this.reload();
    if (!this.versions.has(id)) {
      throw new KeyMaterialError(`${this.description}: KEK '${id}' was written but is not listed`, this.description);
    }
    return id;
  }

  /**
   * Writes a KEK held elsewhere (`rekey keys import`) as a version named `rekey-kek-<id>`, its value the key in
   * base64url, as rekey stores every KEK. In a secret that does not exist yet it is the first version (AWSCURRENT), so
   * the current KEK goes first. Its VersionId comes from the KEK id: an import that is run again, or retried after a
   * lost answer, writes nothing twice. A KEK already there with these bytes is left alone; another key is refused.
   */
  async importKek(kekId: string, key: Buffer, options: { current: boolean }): Promise<'added' | 'present'> {
    await this.reload();
    if (this.versions.has(kekId)) {
      const fingerprint = kekFingerprint(key);
      if (this.fingerprint(kekId) !== fingerprint) {
        throw new KekFingerprintMismatchError(kekId, this.fingerprint(kekId), fingerprint);
      }
      return 'present';
    }
    if (!this.secretExists && !options.current) {
      throw new KeyMaterialError(
        `${this.description} does not exist yet, and its first version becomes AWSCURRENT: import the current KEK first (name it with <PREFIX>_CURRENT_KEK_ID)`,
        this.description,
      );
    }
    const token = versionToken(this.secretId, kekId);
    const label = `${KEK_LABEL}${kekId}`;
    const existing = await this.versionById(token);
    if (existing === undefined) {
      await this.writeVersion(token, key.toString('base64url'), label, { pending: false });
    } else if (!existing.includes(label)) {
      await this.moveLabel(label, { to: token });
    }
    await this.reload();
    return 'added';
  }

  /**
   * Writes `value` as the version `token` labelled `label` (and AWSPENDING when `pending`: a KEK rekey made, not yet
   * promoted), or, in a secret that does not exist yet, creates the secret with it as its first version (AWSCURRENT),
   * tagged with `owner`.
   */
  private async writeVersion(
    token: string,
    value: string,
    label: string,
    { pending, owner }: { pending: boolean; owner?: string },
  ): Promise<void> {
    if (this.secretExists) {
      await this.call('PutSecretValue', () =>
        this.client.send(
          new PutSecretValueCommand({
            SecretId: this.secretId,
            ClientRequestToken: token,
            SecretString: value,
            VersionStages: pending ? [PENDING, label] : [label],
          }),
        ),
      );
      return;
    }
    await this.call('CreateSecret', () =>
      this.client.send(
        new CreateSecretCommand({
          Name: this.secretId,
          ClientRequestToken: token,
          SecretString: value,
          Description: 'KEKs of a rekey keyspace: one version per KEK, named by its rekey-kek-<id> label',
          ...(owner !== undefined && { Tags: [{ Key: KEYSPACE_TAG, Value: owner }] }),
        }),
      ),
    );
    await this.moveLabel(label, { to: token });
  }

  /**
   * Before a provision writes anything: a version read without a rekey label (a hand-made AWSCURRENT, or an
   * AWSPREVIOUS left by the application's own rotation or an earlier build) whose key the registry records gets the
   * registry's name for it, so that no later move of AWS's labels can leave it without one.
   */
  async claim(_provisioning: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    // An untagged secret gets no new version from a keyspace whose registry records none of its keys (owner-rule.ts).
    const tag = await this.keyspaceTag();
    if (tag !== undefined && tag.owner === undefined) {
      await adoptIfRecorded(this, undefined, registry, this.ownSecret, () => Promise.resolve());
    }
    await this.labelUnlabelled(registry);
  }

  /**
   * Labels each unlabelled version whose key the registry records (and has not destroyed) `rekey-kek-<id>` (or
   * `rekey-retired-<id>` for a retired KEK), `<id>` the registry's, and reads the secret again. Adding a label moves
   * no other label, so it never takes one from any version.
   */
  private async labelUnlabelled(registry: readonly RecordedKek[]): Promise<void> {
    let labelled = false;
    for (const [kekId, version] of this.versions) {
      if (!version.unlabelled) continue;
      const record = this.recordOfUnnamed(kekId, registry, (id) => this.versions.has(id));
      if (!record) continue;
      const label = `${record.state === 'retired' ? RETIRED_LABEL : KEK_LABEL}${record.kekId}`;
      await this.moveLabel(label, { to: version.versionId });
      labelled = true;
    }
    if (labelled) await this.reload();
  }

  /** The version this store names `kekId` holds the key the registry recorded for it; refused otherwise. */
  private requireRecorded(kekId: string, registry: readonly RecordedKek[]): Version {
    const version = this.requireVersion(kekId);
    this.requireRecordedKey(kekId, registry);
    return version;
  }

  /**
   * AWSCURRENT moves to `to`'s version (AWS moves AWSPREVIOUS to the version it left), AWSPENDING leaves it. Proven
   * first: `to`'s version holds the key the registry recorded, every version the registry still needs is labelled
   * (an unlabelled one is labelled now), and no such version is left without a rekey label by the move.
   */
  async promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    await this.labelUnlabelled(registry);
    const target = this.requireRecorded(to, registry);
    const holder = [...this.versions].find(([, v]) => v.stages.includes(CURRENT));
    if (holder && holder[1].versionId !== target.versionId && holder[0] !== from) {
      throw new KeyMaterialError(
        `${this.description}: AWSCURRENT is on KEK '${holder[0]}', not on '${from}': someone else changed the secret; promote by hand or re-run the rotation`,
        this.description,
      );
    }
    const needed = new Set<string>();
    for (const [kekId, version] of this.versions) {
      const fingerprint = this.fingerprint(kekId);
      if (registry.some((kek) => kek.fingerprint === fingerprint && kek.state !== 'destroyed')) {
        needed.add(version.versionId);
      }
    }
    const stranded = unlabelledByPromotion(this.stages, target.versionId, needed);
    if (stranded.length > 0) {
      throw new KeyStoreRefusedError(
        `${this.description}: moving AWSCURRENT to KEK '${to}' would leave version(s) ${stranded.join(', ')}, whose keys the registry still needs, without a rekey label (AWS deletes a version with no label): not moved. Label each first: aws secretsmanager update-secret-version-stage --secret-id ${this.secretId} --version-stage rekey-kek-<id> --move-to-version-id <VersionId>`,
      );
    }
    if (holder && holder[1].versionId !== target.versionId) {
      await this.moveLabel(CURRENT, { to: target.versionId, from: holder[1].versionId });
    } else if (!holder) {
      await this.moveLabel(CURRENT, { to: target.versionId });
    }
    if (target.stages.includes(PENDING)) await this.moveLabel(PENDING, { from: target.versionId });
    await this.reload();
  }

  /**
   * The version's name becomes `rekey-retired-<id>`, and AWSPREVIOUS leaves it: no application reads it any more. Its
   * key must be the one the registry recorded.
   */
  async retire(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    await this.reload();
    const version = this.requireRecorded(kekId, registry);
    if (version.stages.includes(CURRENT)) {
      throw new KeyMaterialError(
        `${this.description}: KEK '${kekId}' is AWSCURRENT; promote another KEK first`,
        this.description,
      );
    }
    // The new label first, so the version is never left without one (AWS may delete an unlabelled version).
    if (!version.stages.includes(`${RETIRED_LABEL}${kekId}`)) {
      await this.moveLabel(`${RETIRED_LABEL}${kekId}`, { to: version.versionId });
    }
    for (const stage of [`${KEK_LABEL}${kekId}`, PREVIOUS, PENDING]) {
      if (version.stages.includes(stage)) await this.moveLabel(stage, { from: version.versionId });
    }
    await this.reload();
  }

  /** The version is named `rekey-kek-<id>` again (decrypt-only: AWSPREVIOUS stays where it is). */
  async restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    this.requireHeldForRestore(kekId, registry);
    await this.reload();
    const version = this.requireRecorded(kekId, registry);
    if (!version.stages.includes(`${KEK_LABEL}${kekId}`)) {
      await this.moveLabel(`${KEK_LABEL}${kekId}`, { to: version.versionId });
    }
    if (version.stages.includes(`${RETIRED_LABEL}${kekId}`)) {
      await this.moveLabel(`${RETIRED_LABEL}${kekId}`, { from: version.versionId });
    }
    await this.reload();
  }

  /**
   * Every label leaves the version: it is deprecated, no application and no rekey process reads it again, and AWS
   * deletes it in its own time (Secrets Manager has no call that deletes one version; deleting the secret would take
   * the live KEKs with it). Proven first: the version holds the key the registry recorded for `kekId`, and no other KEK
   * the registry still needs is that key.
   */
  async destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    await this.reload();
    const version = this.versions.get(kekId);
    if (!version) return { destroyed: true, detail: `no version of ${this.description} is named '${kekId}' any more` };
    this.requireRecorded(kekId, registry);
    if (version.stages.includes(CURRENT)) {
      throw new KeyMaterialError(
        `${this.description}: KEK '${kekId}' is AWSCURRENT: it cannot be destroyed`,
        this.description,
      );
    }
    this.refuseSharedKey(`${this.description}: version ${version.versionId}`, kekId, this.fingerprint(kekId), registry);
    for (const stage of version.stages) await this.moveLabel(stage, { from: version.versionId });
    await this.reload();
    return {
      destroyed: true,
      detail: `version ${version.versionId} of ${this.description} has no label left: deprecated, unreadable to rekey and to applications that read by stage, deleted by AWS in its own time`,
    };
  }

  /** The keyspace the secret belongs to: its tag `rekey:keyspace` (one secret per keyspace, so one owner for all). */
  async ownerOf(_kekId?: string): Promise<string | undefined> {
    return (await this.keyspaceTag())?.owner;
  }

  /** What a keyspace that does not use this secret configures instead, for refusals. */
  private get ownSecret(): string {
    return 'a secret of its own (REKEY_AWS_SECRET_ID naming one that does not exist yet)';
  }

  /** An application's first seed: only from a secret whose rekey:keyspace tag names this keyspace (owner-rule.ts). */
  override async refuseSeed(kekId: string, keyspace: string): Promise<void> {
    await this.reload();
    const owner = await this.ownerOf(kekId);
    await refuseSeedUnlessOwned(this, storeScope(this.description, this.ownSecret), kekId, keyspace, owner);
  }

  /**
   * The secret becomes `keyspace`'s when it carries no owner tag and the registry records one of its keys
   * (owner-rule.ts): an untagged secret whose keys the registry does not record may be another deployment's, and is
   * refused, naming the claim command. No secret yet: its first KEK creates it, tagged.
   */
  async adopt(keyspace: string, registry: readonly RecordedKek[] = []): Promise<void> {
    const tag = await this.keyspaceTag();
    if (tag === undefined || tag.owner !== undefined) return;
    await this.reload();
    await adoptIfRecorded(this, keyspace, registry, this.ownSecret, () => this.tagOwner(keyspace));
  }

  /** `rekey keys claim`: the secret becomes `keyspace`'s, named by one of its KEKs and that KEK's fingerprint. */
  claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'> {
    return claimByFingerprint(this, kekId, fingerprint, keyspace, this.ownSecret, () => this.tagOwner(keyspace));
  }

  private async tagOwner(keyspace: string): Promise<void> {
    await this.call('TagResource', () =>
      this.client.send(
        new TagResourceCommand({ SecretId: this.secretId, Tags: [{ Key: KEYSPACE_TAG, Value: keyspace }] }),
      ),
    );
  }

  /** The secret's keyspace tag (`owner` undefined when it has none); undefined when there is no secret. */
  private async keyspaceTag(): Promise<{ owner?: string } | undefined> {
    const described = await awsFind(this.description, 'secretsmanager:DescribeSecret', () =>
      this.client.send(new DescribeSecretCommand({ SecretId: this.secretId })),
    );
    if (described === undefined) return undefined;
    const owner = described.Tags?.find((tag) => tag.Key === KEYSPACE_TAG)?.Value;
    return owner === undefined ? {} : { owner };
  }

  private requireVersion(kekId: string): Version {
    const version = this.versions.get(kekId);
    if (!version) throw new KeyMaterialError(`${this.description} holds no KEK '${kekId}'`, this.description);
    return version;
  }

  /** The stages of the version with this id, or undefined when there is none. */
  private async versionById(versionId: string): Promise<string[] | undefined> {
    const value = await awsFind(this.description, 'secretsmanager:GetSecretValue', () =>
      this.client.send(new GetSecretValueCommand({ SecretId: this.secretId, VersionId: versionId })),
    );
    return value && (value.VersionStages ?? []);
  }

  private async moveLabel(stage: string, { to, from }: { to?: string; from?: string }): Promise<void> {
    await this.call('UpdateSecretVersionStage', () =>
      this.client.send(
        new UpdateSecretVersionStageCommand({
          SecretId: this.secretId,
          VersionStage: stage,
          ...(to !== undefined && { MoveToVersionId: to }),
          ...(from !== undefined && { RemoveFromVersionId: from }),
        }),
      ),
    );
  }

  override close(): void {
    super.close();
    this.client.destroy();
  }
}

/**
 * REKEY_KEY_PROVIDER=aws-secrets-manager: the secret REKEY_AWS_SECRET_ID names; `auto` picks it first, when
 * AWS_REGION or AWS_DEFAULT_REGION is set.
 */
export const secretsManagerStore: ProcessStore<'aws-secrets-manager'> = {
  value: 'aws-secrets-manager',
  auto: {
    order: 1,
    variables: ['AWS_REGION', 'AWS_DEFAULT_REGION'],
    why: (env) =>
      awsRegion(env) ? `${env.AWS_REGION?.trim() ? 'AWS_REGION' : 'AWS_DEFAULT_REGION'} is set` : undefined,
  },
  open: ({ env }) => SecretsManagerKeys.fromEnv(env),
  reads: (env) => {
    const secret = env.REKEY_AWS_SECRET_ID?.trim();
    return secret ? [{ key: `aws-secrets-manager ${secret}`, what: `AWS Secrets Manager secret '${secret}'` }] : [];
  },
};
