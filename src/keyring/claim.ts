// The operator's side of the owner records that refuse what they cannot attribute: `rekey keys generate` records the
// keyspace on a key it makes in AWS KMS or Vault Transit, and `rekey keys claim` records it on a store's key that has no
// owner yet (a KMS key made by hand or by an earlier `keys generate`; a Transit key, a Vault KV secret or a Secrets
// Manager secret from before owner records, which a keyspace whose registry does not record its keys never takes by
// itself: owner-rule.ts), naming the key by its KEK id and fingerprint, so that the claim is an explicit act on one
// key, never a guess.
import type { StoreDriver } from './driver';
import { KmsKeys, keyArnOf } from './drivers/aws-kms';
import { KmsWithLocalKeys } from './drivers/kms-move-in';
import { VaultTransitKeys } from './drivers/vault-transit';
import { VaultKvKeys } from './drivers/vault-kv';
import { SecretsManagerKeys } from './drivers/aws-secrets-manager';
import { CliError } from '../errors';

/** The stores whose KEKs must carry their keyspace from creation: an unrecorded key there is refused, not adopted. */
export function recordsOwnerAtCreation(store: StoreDriver): boolean {
  return store instanceof KmsKeys || store instanceof KmsWithLocalKeys || store instanceof VaultTransitKeys;
}

/**
 * Records `keyspace` as the owner of KEK `kekId`, the key with `fingerprint` (as `rekey keys list` prints it).
 * `already`: it was this keyspace's. Another keyspace's key is refused (KeyspaceMismatchError).
 */
export async function claimKek(
  store: StoreDriver,
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
  if (store instanceof VaultTransitKeys || store instanceof VaultKvKeys || store instanceof SecretsManagerKeys) {
    return store.claimKey(kekId, fingerprint, keyspace);
  }
  throw new CliError(
    `${store.description} takes its first keyspace's ownership at that keyspace's first rotation: nothing to claim (rekey keys claim is for the stores other deployments can reach: AWS KMS, Vault Transit, Vault KV and Secrets Manager)`,
    'invalid',
  );
}
