// The operator's side of the owner records that refuse what they cannot attribute: `rekey keys generate` records the
// keyspace on a key it makes in a store whose keys carry it from creation (AWS KMS, Vault Transit), and `rekey keys
// claim` records it on a store's key that has no owner yet (a KMS key made by hand or by an earlier `keys generate`; a
// Transit key, a Vault KV secret or a Secrets Manager secret from before owner records, which a keyspace whose registry
// does not record its keys never takes by itself: owner-rule.ts), naming the key by its KEK id and fingerprint, so that
// the claim is an explicit act on one key, never a guess. Each driver carries out its own claim (claimKey).
import type { StoreDriver } from './driver';

/** The stores whose KEKs must carry their keyspace from creation: an unrecorded key there is refused, not adopted. */
export function recordsOwnerAtCreation(store: StoreDriver): boolean {
  return store.ownerAtCreation;
}

/**
 * Records `keyspace` as the owner of KEK `kekId`, the key with `fingerprint` (as `rekey keys list` prints it).
 * `already`: it was this keyspace's. Another keyspace's key is refused (KeyspaceMismatchError).
 */
export function claimKek(
  store: StoreDriver,
  kekId: string,
  fingerprint: string,
  keyspace: string,
): Promise<'claimed' | 'already'> {
  return store.claimKey(kekId, fingerprint, keyspace);
}
