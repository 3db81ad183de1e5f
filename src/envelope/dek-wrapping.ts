import { createHmac, randomBytes } from 'node:crypto';
import { REKEY_DEK_FORMAT } from '../codec/formats';
import { compileFormat, KEY_BYTES, NONCE_BYTES, TAG_BYTES } from '../codec/sealed-format';
import { DekUnwrapError, KeyMaterialError, UnreadableValueError } from '../errors';

// rekey's own wrapped DEK, as the built-in target stores it: format byte 0x01 | nonce (12) | ciphertext (32) | tag
// (16), bound to the tenant id and the KEK id (REKEY_DEK_FORMAT). These helpers are the application API's view of it.
export { KEY_BYTES, NONCE_BYTES, TAG_BYTES };
export const WRAP_FORMAT_V1 = 0x01;
export const WRAPPED_DEK_BYTES = 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES;

const codec = compileFormat(REKEY_DEK_FORMAT);

/** Wraps `dek` under `kek`. `nonce` is for batch callers that draw many nonces with one randomBytes call. */
export function wrapDek(kek: Buffer, kekId: string, tenantId: string, dek: Buffer, nonce?: Buffer): Buffer {
  if (dek.length !== KEY_BYTES) throw new RangeError(`a DEK is ${KEY_BYTES} bytes, got ${dek.length}`);
  return codec.seal(kek, dek, { tenant_id: tenantId }, kekId, nonce ?? randomBytes(NONCE_BYTES))[0] as Buffer;
}

/** Writes the wrapped form into `out` at `offset` (seeding fills one buffer per chunk this way). */
export function wrapDekInto(
  out: Buffer,
  offset: number,
  kek: Buffer,
  kekId: string,
  tenantId: string,
  dek: Buffer,
  nonce: Buffer,
): void {
  wrapDek(kek, kekId, tenantId, dek, nonce).copy(out, offset);
}

/** Unwraps a DEK, or throws DekUnwrapError naming the tenant and why. The caller zeroizes the result. */
export function unwrapDek(kek: Buffer, kekId: string, tenantId: string, wrapped: Buffer): Buffer {
  try {
    return codec.open(kek, { tenant_id: tenantId, wrapped_dek: wrapped }, kekId);
  } catch (err) {
    if (err instanceof UnreadableValueError) throw new DekUnwrapError(tenantId, kekId, err.reason);
    throw err;
  }
}

/**
 * A KEK's self-test: a random DEK wrapped under it opens again, the same; else a KeyMaterialError naming the KEK and
 * `where` it is kept. Every buffer is zeroized.
 */
export function selfTestKek(kek: Buffer, kekId: string, where: string): void {
  const probe = randomBytes(KEY_BYTES);
  const unwrapped = unwrapDek(kek, kekId, 'rekey-self-test', wrapDek(kek, kekId, 'rekey-self-test', probe));
  const works = unwrapped.equals(probe);
  probe.fill(0);
  unwrapped.fill(0);
  if (!works) throw new KeyMaterialError(`KEK '${kekId}' failed its wrap/unwrap self-test`, where);
}

/**
 * Key check value: an HMAC of a fixed label under the key. It identifies a key without revealing anything about it,
 * so it may be logged, stored in the registry and carried in workflow history.
 */
export function kekFingerprint(kek: Buffer): string {
  return `kcv1:${createHmac('sha256', kek).update('rekey key check value').digest('hex').slice(0, 32)}`;
}
