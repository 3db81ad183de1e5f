// A store's keys used directly, as a test reaches them: through the ciphers its driver hands out (by the name the
// store gives a key, or the fingerprint a registry recorded), never through a second path of key bytes.
import type { Pool } from 'pg';
import { wrapDek } from '../../src/envelope/dek-wrapping';
import type { KekState } from '../../src/envelope/kek-lifecycle';
import type { StoreDriver } from '../../src/keyring/driver';
import { KeyringCiphers, storeCipher, storedKek } from '../../src/keyring/keyring';
import { KekRegistry, type KekRecord } from '../../src/store/kek-registry';

/**
 * The reading half of a keyring over `store` with no registry behind it: names, held keys and ciphers given the
 * registry's record (`cipherFor`); a step that would read the registry fails.
 */
export function keyringOver(store: StoreDriver, target = 'rekey'): KeyringCiphers {
  return new KeyringCiphers({ driver: store, registry: new KekRegistry(undefined as unknown as Pool, target), target });
}

/** The ids of the keys a keyring holds, sorted. */
export async function heldIds(keyring: KeyringCiphers): Promise<string[]> {
  return (await keyring.held()).map((k) => k.kekId).sort();
}

/** The ids of the keys a store names (as last read), sorted: `keyring.held()` of a keyring over it. */
export async function storedIds(store: StoreDriver): Promise<string[]> {
  return heldIds(keyringOver(store));
}

/** The fingerprint of the key a store names `kekId` (as last read); UnknownKekError when it names none. */
export async function fingerprintIn(store: StoreDriver, kekId: string): Promise<string> {
  return (await storedKek(store, kekId)).fingerprint;
}

/** `dek` stored under the key `store` names `kekId`, as an application of rekey's own format wraps it. */
export async function wrapUnder(store: StoreDriver, kekId: string, tenantId: string, dek: Buffer): Promise<Buffer> {
  const cipher = await storeCipher(store, kekId);
  try {
    return wrapDek(cipher.rowKek().key, kekId, tenantId, dek);
  } finally {
    cipher.release();
  }
}

/** The DEK stored as `wrapped` under the key `store` names `kekId`; the caller zeroizes it. */
export async function unwrapUnder(
  store: StoreDriver,
  kekId: string,
  tenantId: string,
  wrapped: Buffer,
): Promise<Buffer> {
  const cipher = await storeCipher(store, kekId);
  try {
    return await cipher.open(tenantId, wrapped);
  } finally {
    cipher.release();
  }
}

/**
 * The key of `kekId` as a keyring hands it out: by the fingerprint `registered` records (refused when its state lets
 * it unwrap nothing), else by the store's name for it. `key` is the cipher's copy; zeroize it when done.
 */
export async function resolveKek(
  store: StoreDriver,
  kekId: string,
  registered: { fingerprint: string; state?: KekState; target?: string } | undefined,
): Promise<{ kekId: string; fingerprint: string; key: Buffer }> {
  const record =
    registered && ({ kekId, fingerprint: registered.fingerprint, state: registered.state ?? 'active' } as KekRecord);
  const cipher = await keyringOver(store, registered?.target ?? '?').cipherFor(kekId, record);
  const { fingerprint, key } = cipher.rowKek();
  return { kekId, fingerprint, key };
}
