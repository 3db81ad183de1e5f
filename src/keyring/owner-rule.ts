// One rule for every store other deployments can reach (issue 24's finding 1, issue 26): a keyspace takes a store's
// key that has no owner record only when its registry already records that key (by fingerprint, not destroyed), or
// when the operator claims it by id and fingerprint (`rekey keys claim`). A key from before owner records that the
// registry does not record may be another deployment's (DevSkyy's default KV path read by staging and production, one
// Transit key named by two deployments, a KMS key made by hand under the alias prefix): the first rotation that meets
// it does not take it. The rule is the same for every store; what differs is where the owner record is: each AWS KMS
// key carries its own tag (every untagged key must be recorded), while a Vault KV secret, a Secrets Manager secret and
// a Transit key have one record for all their keys (one recorded key proves the store). The refusal is built here only.
import type { RecordedKek, StoredKek } from './driver';
import { KekFingerprintMismatchError, KeyspaceMismatchError, KeyStoreRefusedError, UnknownKekError } from '../errors';

/** A key of a store without an owner record, as the rule and its refusal name it. */
export interface UnownedKey {
  kekId?: string;
  fingerprint: string;
  /** Where the operator finds it, when the fingerprint alone does not say (a KMS key's alias and ARN). */
  shown?: string;
}

/** How a store keeps its owner records, and what the refusal says of it. */
export interface OwnerScope {
  /** `key`: each key has its own record (AWS KMS tags); `store`: one record covers all the store's keys. */
  readonly recordPer: 'key' | 'store';
  /** The refusal's subject, given the keys listed: `the alias prefix … holds KMS key(s) <listed> with no … tag`. */
  subject(listed: string): string;
  /** Why the keys may be another deployment's (a parenthesis of the refusal). */
  readonly mayBe: string;
  /** What a keyspace that does not use these keys configures instead. */
  readonly ownKeys: string;
}

/** The scope of a store whose one owner record covers all its keys, named by its description. */
export function storeScope(description: string, ownKeys: string): OwnerScope {
  return {
    recordPer: 'store',
    subject: (listed) => `${description} has no owner record and holds KEK(s) ${listed}`,
    mayBe: 'a store made before owner records, read by more than one deployment',
    ownKeys,
  };
}

/**
 * The keys (all without an owner record) that the registry does not let this keyspace take: per key, each one it does
 * not record by fingerprint; per store, all of them when it records none (one recorded key proves the store's owner).
 */
export function unclaimedKeys<K extends UnownedKey>(
  scope: OwnerScope,
  keys: readonly K[],
  registry: readonly RecordedKek[],
): K[] {
  const recorded = new Set(registry.filter((r) => r.state !== 'destroyed').map((r) => r.fingerprint));
  const unrecorded = keys.filter((key) => !recorded.has(key.fingerprint));
  if (scope.recordPer === 'key') return unrecorded;
  return unrecorded.length === keys.length ? [...keys] : [];
}

/**
 * The refusal of keys no keyspace has claimed, with the command that claims them: one per key where each key has its
 * own record, one key naming the store where one record covers all.
 */
export function unclaimedRefusal(
  scope: OwnerScope,
  keys: readonly UnownedKey[],
  keyspace: string | undefined,
): KeyStoreRefusedError {
  const listed = keys.map((key) => `'${key.kekId ?? '(unnamed)'}' (${key.shown ?? key.fingerprint})`).join(', ');
  const claims = scope.recordPer === 'key' ? keys : [keys.at(-1)!];
  const commands = claims
    .map((key) => `rekey keys claim ${key.kekId ?? '<KEK id>'} --fingerprint ${key.fingerprint}`)
    .join('; ');
  const whose = keyspace === undefined ? 'this keyspace' : `keyspace ${keyspace}`;
  const claimed = scope.recordPer === 'key' ? "If a key is this keyspace's KEK" : "If the store is this keyspace's";
  return new KeyStoreRefusedError(
    `${scope.subject(listed)}, which the registry of ${whose} does not record: ` +
      `another deployment may use them (${scope.mayBe}), and rekey does not take them as this keyspace's, nor rotate beside them. ` +
      `${claimed}, claim it (with this keyspace's DATABASE_URL, and --target naming its target): ${commands}. ` +
      `If it is not, give this keyspace ${scope.ownKeys}`,
  );
}

/** Refuses (before anything is written) when the registry does not let this keyspace take the unowned `keys`. */
export function refuseUnclaimed(
  scope: OwnerScope,
  keys: readonly UnownedKey[],
  registry: readonly RecordedKek[],
  keyspace: string | undefined,
): void {
  const unclaimed = unclaimedKeys(scope, keys, registry);
  if (unclaimed.length > 0) throw unclaimedRefusal(scope, unclaimed, keyspace);
}

/**
 * Before an application's first start seeds an empty registry with KEK `kekId` (TenantCrypto): the owner rule with a
 * registry that records nothing yet. The store's owner record naming `keyspace` lets it seed; another keyspace's is
 * refused (KeyspaceMismatchError); a store with no record and keys is refused with the command that claims it, as a
 * rotation's first step would be.
 */
export async function refuseSeedUnlessOwned(
  store: { readonly description: string; list(): Promise<StoredKek[]> },
  scope: OwnerScope,
  kekId: string,
  keyspace: string,
  owner: string | undefined,
): Promise<void> {
  if (owner === keyspace) return;
  if (owner !== undefined) {
    throw new KeyspaceMismatchError(
      `not seeding the registry of keyspace ${keyspace} with KEK '${kekId}': ${store.description} records keyspace ${owner} as its owner. Give this keyspace ${scope.ownKeys}`,
    );
  }
  refuseUnclaimed(scope, await store.list(), [], keyspace);
}

/** What the rule needs of a store whose owner record covers all its keys (a Vault KV or Secrets Manager secret). */
interface OneOwnerStore {
  readonly description: string;
  reload(): Promise<void>;
  list(): Promise<StoredKek[]>;
  ownerOf(kekId: string): Promise<string | undefined>;
}

/**
 * Adopt for a store that exists and records no owner: `record` writes `keyspace` as its owner when the registry
 * records one of its keys, or when it holds none (nothing another deployment reads from it); otherwise refused.
 */
export async function adoptIfRecorded(
  store: OneOwnerStore,
  keyspace: string | undefined,
  registry: readonly RecordedKek[],
  ownKeys: string,
  record: () => Promise<void>,
): Promise<void> {
  refuseUnclaimed(storeScope(store.description, ownKeys), await store.list(), registry, keyspace);
  await record();
}

/**
 * The operator's claim (`rekey keys claim <id> --fingerprint <fp>`): the store holds KEK `kekId` with that
 * fingerprint; then `record` writes `keyspace` as the store's owner if it has none. Another keyspace's is refused.
 */
export async function claimByFingerprint(
  store: OneOwnerStore,
  kekId: string,
  fingerprint: string,
  keyspace: string,
  ownKeys: string,
  record: () => Promise<void>,
): Promise<'claimed' | 'already'> {
  await store.reload();
  const held = (await store.list()).find((k) => k.kekId === kekId);
  if (held === undefined) throw new UnknownKekError(kekId, store.description);
  if (held.fingerprint !== fingerprint) {
    throw new KekFingerprintMismatchError(
      kekId,
      fingerprint,
      held.fingerprint,
      `KEK '${kekId}' in ${store.description} is ${held.fingerprint}, not the ${fingerprint} given: rekey claims only the key named`,
    );
  }
  const before = await store.ownerOf(kekId);
  if (before === undefined) await record();
  const owner = await store.ownerOf(kekId);
  if (owner !== keyspace) {
    throw new KeyspaceMismatchError(
      `not claiming KEK '${kekId}': ${store.description} records keyspace ${owner ?? '(none)'} as its owner, and this is keyspace ${keyspace}. Give this keyspace ${ownKeys}`,
    );
  }
  return before === keyspace ? 'already' : 'claimed';
}
