// The owner record of a Vault Transit key (finding 1 of issue 24 for Transit). A Transit key carries no metadata of
// its own, so its owner is recorded beside it: one KV v2 secret per Transit key, at
// `secret/rekey/transit-keys/<transit mount>/<key>`: a place derived from the Transit key alone, the same for every
// deployment that uses the key (the KV v2 mount `secret`, whatever REKEY_VAULT_KV_MOUNT a deployment sets: a place that
// followed a setting of each deployment let two deployments of one key each find no record and each claim it). Its
// first version's data names the keyspace (`{"keyspace": "<database id>/<schema.table>", "transit_key": "<mount>/<key>"}`).
// It is written once, with check-and-set 0 (only while no such secret exists), so of two keyspaces that claim one key
// at the same moment exactly one wins and the other reads the winner; rekey never writes it again (its policy grants
// `create` and `read`, not `update`). Releasing a key is the operator's act: `vault kv metadata delete` of the record.
import type { VaultCapability, VaultHttp } from './vault-http';
import { KeyMaterialError, KeyStoreRefusedError, KeyspaceMismatchError } from '../errors';

/** Where a Transit key's owner record is: the KV v2 mount and the secret's path within it. */
export interface TransitOwnerPlace {
  kvMount: string;
  path: string;
}

/** The KV v2 mount of every Transit key's owner record: fixed, so that every deployment of a key reads one record. */
export const TRANSIT_OWNER_KV_MOUNT = 'secret';

/** The record's place for the Transit key `<mount>/<key>`: derived from the key alone, never from a deployment's setting. */
export function transitOwnerPlace(transit: { mount: string; key: string }): TransitOwnerPlace {
  return { kvMount: TRANSIT_OWNER_KV_MOUNT, path: `rekey/transit-keys/${transit.mount}/${transit.key}` };
}

type Read = { owner: string } | { none: true } | { deleted: true };

interface KvRead {
  data?: { data?: { keyspace?: unknown } | null; metadata?: { deletion_time?: string; destroyed?: boolean } };
}

export class TransitOwnerRecord {
  constructor(
    private readonly http: VaultHttp,
    private readonly place: TransitOwnerPlace,
    /** The Transit key, for messages: `Vault Transit key 'transit/rekey-kek' (Vault at …)`. */
    private readonly transit: string,
  ) {}

  private get dataPath(): string {
    return `${this.place.kvMount}/data/${this.place.path}`;
  }

  /** The record as `vault kv` names it, for the operator's commands. */
  get name(): string {
    return `${this.place.kvMount}/${this.place.path}`;
  }

  /** What rekey's worker needs on the record: make it once, read it. */
  capabilities(): Record<string, VaultCapability[]> {
    return { [this.dataPath]: ['create', 'read'] };
  }

  private async read(): Promise<Read> {
    const answer = await this.http.send<KvRead>('GET', this.dataPath, {
      operation: 'transit owner read',
      needs: ['read'],
      expect: [404],
    });
    const metadata = answer.body?.data?.metadata;
    if (answer.status === 404) {
      if (metadata?.deletion_time || metadata?.destroyed) return { deleted: true };
      // A KV v2 mount answers a secret that is not there with no error; a path no mount serves names the route.
      if (answer.errors.length > 0) throw this.noKvMount(answer.errors.join('; '));
      return { none: true };
    }
    const owner = answer.body?.data?.data?.keyspace;
    if (metadata === undefined || typeof owner !== 'string') {
      throw this.noKvMount(`${this.name} is not a KV v2 secret holding a keyspace`);
    }
    return { owner };
  }

  private noKvMount(said: string): KeyMaterialError {
    return new KeyMaterialError(
      `${this.transit}: its owner record is the KV v2 secret ${this.name}, the same place for every deployment of the key (REKEY_VAULT_KV_MOUNT does not move it), which rekey cannot read (${said}). ` +
        `Vault must serve a KV v2 mount at ${this.place.kvMount}/ (vault secrets enable -path=${this.place.kvMount} kv-v2, if none is there), and the worker's token needs "create" and "read" on ${this.dataPath} (docs/06-key-stores.md, Vault Transit's policy)`,
      this.name,
    );
  }

  private deletedRecord(): KeyStoreRefusedError {
    return new KeyStoreRefusedError(
      `${this.transit}: its owner record ${this.name} was deleted but not removed, so rekey cannot tell which keyspace the key belongs to: ` +
        `bring it back (vault kv undelete -versions=1 ${this.name}) if its keyspace still uses the key, or remove it (vault kv metadata delete ${this.name}) to let the next keyspace that uses the key claim it`,
    );
  }

  /** The keyspace the record names; undefined while there is none (a key made before owner records). */
  async ownerOf(): Promise<string | undefined> {
    const read = await this.read();
    return 'owner' in read ? read.owner : undefined;
  }

  /**
   * Records `keyspace` as the key's owner if no keyspace is recorded yet (check-and-set 0: only the first of two
   * claims is written). Returns the owner recorded afterwards: `keyspace`, or the keyspace that claimed it first.
   */
  private async write(keyspace: string): Promise<string> {
    const read = await this.read();
    if ('owner' in read) return read.owner;
    if ('deleted' in read) throw this.deletedRecord();
    const written = await this.http.send('POST', this.dataPath, {
      operation: 'transit owner write',
      needs: ['create'],
      body: { options: { cas: 0 }, data: { keyspace, transit_key: this.transit } },
      expect: [400],
    });
    if (written.status !== 400) return keyspace;
    // Another claim was written first (or the secret exists in some other state): what is recorded now decides.
    const again = await this.read();
    if ('owner' in again) return again.owner;
    if ('deleted' in again) throw this.deletedRecord();
    throw new KeyMaterialError(
      `${this.transit}: rekey could not write its owner record ${this.name}: ${written.errors.join('; ')}`,
      this.name,
    );
  }

  /**
   * The key becomes `keyspace`'s if no keyspace has it yet; another's record is left as it is. Only for a key this
   * keyspace has shown to be its own (its registry records a version, or the operator claims it by fingerprint).
   * Returns the owner recorded afterwards.
   */
  record(keyspace: string): Promise<string> {
    return this.write(keyspace);
  }

  /** The record as read: its owner, none (a key from before owner records), or a record deleted but not removed. */
  async state(): Promise<{ owner: string } | { none: true }> {
    const read = await this.read();
    if ('deleted' in read) throw this.deletedRecord();
    return read;
  }

  /** Before a new version is made for `keyspace`: the key is recorded as its own (claimed now if unrecorded). */
  async claim(keyspace: string, step: string): Promise<void> {
    const owner = await this.write(keyspace);
    if (owner !== keyspace) throw this.foreign(owner, keyspace, step);
  }

  /**
   * Before a step that stops, restarts or removes versions (retire, restore, trim): some keyspace is recorded. The
   * keyring checks that it is the one asking; a key no keyspace has claimed is not touched (fail closed).
   */
  async requireRecorded(step: string): Promise<void> {
    const read = await this.read();
    if ('owner' in read) return;
    if ('deleted' in read) throw this.deletedRecord();
    throw new KeyStoreRefusedError(
      `${this.transit} has no owner record (${this.name}), so rekey does not ${step}: a keyspace records itself as the key's owner at its rotation's first step when its registry records one of the key's versions. ` +
        `Start the keyspace's rotation again (rekey rotate), or, if the key is this keyspace's, claim it: rekey keys claim <KEK id> --target <target> --fingerprint <its fingerprint, from rekey kek-status>`,
    );
  }

  private foreign(owner: string, keyspace: string, step: string): KeyspaceMismatchError {
    return new KeyspaceMismatchError(
      `not ${step}: ${this.transit} records keyspace ${owner} as its owner (${this.name}), and this is keyspace ${keyspace}. ` +
        `A Transit key belongs to one keyspace: another's retire raises min_decryption_version past the versions this one still uses. ` +
        `Give this keyspace a key of its own (REKEY_VAULT_TRANSIT_KEY naming one that does not exist yet)`,
    );
  }
}
