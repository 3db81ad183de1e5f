// The operator's side of the owner records that refuse what they cannot attribute: `rekey keys generate` records the
// keyspace on a key it makes in AWS KMS or Vault Transit, and `rekey keys claim` records it on a key that has no owner
// yet (a KMS key made by hand or by an earlier `keys generate`; a Transit key made before owner records), naming the
// key by its KEK id and fingerprint, so that the claim is an explicit act on one key, never a guess.
import type { KeyStore } from '../keys';
import { KmsKeys, keyArnOf } from './drivers/aws-kms';
import { KmsWithLocalKeys } from './drivers/kms-move-in';
import { VaultTransitKeys } from './drivers/vault-transit';
import { CliError, KekFingerprintMismatchError, KeyspaceMismatchError, UnknownKekError } from '../errors';

/** The stores whose KEKs must carry their keyspace from creation: an unrecorded key there is refused, not adopted. */
export function recordsOwnerAtCreation(store: KeyStore): boolean {
  return store instanceof KmsKeys || store instanceof KmsWithLocalKeys || store instanceof VaultTransitKeys;
}

/**
 * Records `keyspace` as the owner of KEK `kekId`, the key with `fingerprint` (as `rekey keys list` prints it).
 * `already`: it was this keyspace's. Another keyspace's key is refused (KeyspaceMismatchError).
 */
export async function claimKek(
  store: KeyStore,
  kekId: string,
  fingerprint: string,
  keyspace: string,
): Promise<'claimed' | 'already'> {
  const kms = store instanceof KmsWithLocalKeys ? store.kms : store instanceof KmsKeys ? store : undefined;
  if (kms !== undefined) {
    const arn = keyArnOf(fingerprint);
    if (arn === undefined) {
      throw new CliError(
        `--fingerprint must name the KMS key as rekey prints it, kms:<key ARN> (rekey keys list), not '${fingerprint}'`,
        'invalid',
      );
    }
    return kms.claimKey(kekId, arn, keyspace);
  }
  if (store instanceof VaultTransitKeys) {
    await store.reload();
    if (!store.has(kekId)) throw new UnknownKekError(kekId, store.description);
    if (store.fingerprint(kekId) !== fingerprint) {
      throw new KekFingerprintMismatchError(
        kekId,
        fingerprint,
        store.fingerprint(kekId),
        `KEK '${kekId}' in ${store.description} is ${store.fingerprint(kekId)}, not the ${fingerprint} given: rekey claims only the key named`,
      );
    }
    const before = await store.recordedOwner();
    await store.adopt(keyspace);
    const owner = await store.recordedOwner();
    if (owner !== keyspace) {
      throw new KeyspaceMismatchError(
        `not claiming KEK '${kekId}': ${store.description} records keyspace ${owner ?? '(none)'} as its owner, and this is keyspace ${keyspace}. Give this keyspace a Transit key of its own (REKEY_VAULT_TRANSIT_KEY)`,
      );
    }
    return before === keyspace ? 'already' : 'claimed';
  }
  throw new CliError(
    `${store.description} takes its first keyspace's ownership at that keyspace's first rotation: nothing to claim (rekey keys claim is for AWS KMS and Vault Transit)`,
    'invalid',
  );
}
