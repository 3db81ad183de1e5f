// The owner record of a Vault Transit key (finding 1 of issue 24 for Transit). A Transit key carries no metadata of
// its own, so its owner is recorded beside it: one KV v2 secret per Transit key, at
// `<REKEY_VAULT_KV_MOUNT>/rekey/transit-keys/<transit mount>/<key>`, whose first version's data names the keyspace
// (`{"keyspace": "<database id>/<schema.table>", "transit_key": "<mount>/<key>"}`). It is written once, with
// check-and-set 0 (only while no such secret exists), so of two keyspaces that claim one key at the same moment exactly
// one wins and the other reads the winner; rekey never writes it again (its policy grants `create` and `read`, not
// `update`). Releasing a key is the operator's act: `vault kv metadata delete` of the record.
import { vaultPath, type VaultCapability, type VaultHttp } from './vault-http';
import { KeyMaterialError, KeyStoreRefusedError, KeyspaceMismatchError } from '../errors';

/** Where a Transit key's owner record is: the KV v2 mount and the secret's path within it. */
export interface TransitOwnerPlace {
  kvMount: string;
  path: string;
}

/** The record's place for the Transit key `<mount>/<key>`, in the KV v2 mount REKEY_VAULT_KV_MOUNT (default secret). */
export function transitOwnerPlace(env: NodeJS.ProcessEnv, transit: { mount: string; key: string }): TransitOwnerPlace {
  return {
    kvMount: vaultPath(env.REKEY_VAULT_KV_MOUNT?.trim() || 'secret', 'REKEY_VAULT_KV_MOUNT', 'secret'),
    path: `rekey/transit-keys/${transit.mount}/${transit.key}`,
  };
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
      `${this.transit}: its owner record is the KV v2 secret ${this.name}, which rekey cannot read (${said}): REKEY_VAULT_KV_MOUNT must name a KV v2 mount (default secret; vault secrets enable -path=secret kv-v2)`,
      'REKEY_VAULT_KV_MOUNT',
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

  /** Validate's first step: the key becomes `keyspace`'s if no keyspace has it yet; another's record is left as it is. */
  async adopt(keyspace: string): Promise<void> {
    await this.write(keyspace);
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
      `${this.transit} has no owner record (${this.name}), so rekey does not ${step}: a keyspace records itself as the key's owner at its rotation's first step. ` +
        `Start the keyspace's rotation again (rekey rotate), or record it by hand: rekey keys claim <KEK id> --target <target> --fingerprint <its fingerprint, from rekey kek-status>`,
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
