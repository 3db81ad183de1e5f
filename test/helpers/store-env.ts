// The environment a test opens a remote key store of its own from, on the test servers (moto, Vault): a fresh place in
// the store, unpaced, so that tests sharing a server never meet each other's keys and none waits on a rate it does not test.
import { randomUUID } from 'node:crypto';

/**
 * An AWS KMS store on moto (`motoEnv`) of its own: a fresh alias prefix under `alias/<label>/`, unpaced
 * (REKEY_AWS_KMS_RATE=0).
 */
export function kmsEnv(motoEnv: Record<string, string>, label = 'rekey-test'): Record<string, string> {
  return { ...motoEnv, REKEY_AWS_KMS_ALIAS_PREFIX: `alias/${label}/${randomUUID()}/`, REKEY_AWS_KMS_RATE: '0' };
}

/** A Vault Transit store on `vaultEnv`'s server: the key `key` (a fresh name unless given), unpaced. */
export function transitEnv(vaultEnv: Record<string, string>, key = `rekey-${randomUUID()}`): Record<string, string> {
  return { ...vaultEnv, REKEY_VAULT_TRANSIT_KEY: key, REKEY_VAULT_TRANSIT_RATE: '0' };
}
