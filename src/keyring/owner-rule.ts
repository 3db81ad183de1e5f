// One rule for every store other deployments can reach (issue 24's finding 1, issue 26): a keyspace takes a store's
// key that has no owner record only when its registry already records that key (by fingerprint), or when the operator
// claims it by id and fingerprint (`rekey keys claim`). A key from before owner records that the registry does not
// record may be another deployment's (DevSkyy's default KV path read by staging and production, one Transit key named
// by two deployments): the first rotation that meets it does not take it. AWS KMS applies it per key (kms-owner.ts);
// a Vault KV secret, a Secrets Manager secret and a Transit key have one owner for all their keys, and apply it here.
import type { RecordedKek, StoredKek } from './driver';
import { KekFingerprintMismatchError, KeyspaceMismatchError, KeyStoreRefusedError, UnknownKekError } from '../errors';

/** Whether the registry records (not destroyed) one of the store's keys by its fingerprint. */
export function registryRecordsAny(keys: readonly { fingerprint: string }[], registry: readonly RecordedKek[]): boolean {
  const recorded = new Set(registry.filter((r) => r.state !== 'destroyed').map((r) => r.fingerprint));
  return keys.some((key) => recorded.has(key.fingerprint));
}

/**
 * The refusal of a store without an owner record whose keys the keyspace's registry does not record, with the command
 * that claims it (one key names the store: its owner record covers all its keys). `ownKeys`: what a keyspace that
 * does not use this store configures instead.
 */
export function unclaimedStore(
  description: string,
  keys: readonly { kekId?: string; fingerprint: string }[],
  keyspace: string | undefined,
  ownKeys: string,
): KeyStoreRefusedError {
  const listed = keys.map((key) => `'${key.kekId ?? '(unnamed)'}' (${key.fingerprint})`).join(', ');
  const claim = keys.at(-1)!;
  return new KeyStoreRefusedError(
    `${description} has no owner record and holds KEK(s) ${listed}, which the registry of ${keyspace === undefined ? 'this keyspace' : `keyspace ${keyspace}`} does not record: ` +
      `another deployment may use them (a store made before owner records, read by more than one deployment), and rekey does not take them as this keyspace's, nor rotate beside them. ` +
      `If the store is this keyspace's, claim it (with this keyspace's DATABASE_URL, and --target naming its target): rekey keys claim ${claim.kekId ?? '<KEK id>'} --fingerprint ${claim.fingerprint}. ` +
      `If it is not, give this keyspace ${ownKeys}`,
  );
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
  const keys = await store.list();
  if (keys.length > 0 && !registryRecordsAny(keys, registry)) {
    throw unclaimedStore(store.description, keys, keyspace, ownKeys);
  }
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
