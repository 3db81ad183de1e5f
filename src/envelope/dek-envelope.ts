// The application's DEK operations over any key provider: with key bytes held here (env, file, Secrets Manager) a DEK
// is drawn locally and wrapped with AES-GCM; with a store that wraps DEKs itself (AWS KMS) the store does it.
import { randomBytes } from 'node:crypto';
import type { KeyProvider } from '../keys/key-provider';
import { KEY_BYTES } from './dek-wrapping';

/** A new DEK (the caller zeroizes it) and its stored form under `kekId`. */
export async function createDek(
  keys: KeyProvider,
  kekId: string,
  tenantId: string,
): Promise<{ dek: Buffer; wrapped: Buffer }> {
  if (keys.deks) return keys.deks.newDek(kekId, tenantId);
  const dek = randomBytes(KEY_BYTES);
  try {
    return { dek, wrapped: keys.wrap(kekId, tenantId, dek) };
  } catch (err) {
    dek.fill(0);
    throw err;
  }
}

/** The DEK stored as `wrapped` under `kekId`; the caller zeroizes it. */
export function openDek(keys: KeyProvider, kekId: string, tenantId: string, wrapped: Buffer): Promise<Buffer> {
  if (keys.deks) return keys.deks.unwrapDek(kekId, tenantId, wrapped);
  return Promise.resolve(keys.unwrap(kekId, tenantId, wrapped));
}

/** The stored form under `to` of the DEK stored as `wrapped` under `from`. */
export async function moveDek(
  keys: KeyProvider,
  from: string,
  to: string,
  tenantId: string,
  wrapped: Buffer,
): Promise<Buffer> {
  if (keys.deks) return keys.deks.rewrapDek(from, to, tenantId, wrapped);
  const dek = keys.unwrap(from, tenantId, wrapped);
  try {
    return keys.wrap(to, tenantId, dek);
  } finally {
    dek.fill(0);
  }
}
