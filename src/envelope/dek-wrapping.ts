import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { DekUnwrapError } from './errors';

// Stored form of a wrapped DEK: format version (1 byte) | nonce (12) | AES-256-GCM ciphertext (32) | tag (16).
export const WRAP_FORMAT_V1 = 0x01;
export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const WRAPPED_DEK_BYTES = 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES;

const AAD_LABEL = Buffer.from('rekey/dek/v1\0', 'utf8');

/**
 * Associated data binding a wrapped DEK to its tenant and its KEK: a wrapped DEK copied onto another tenant's row,
 * or relabelled with another KEK id, fails authentication. Length prefixes keep (tenant, kek) pairs unambiguous.
 */
export function dekAad(tenantId: string, kekId: string): Buffer {
  const tenant = Buffer.from(tenantId, 'utf8');
  const kek = Buffer.from(kekId, 'utf8');
  const aad = Buffer.allocUnsafe(AAD_LABEL.length + 4 + tenant.length + 4 + kek.length);
  let offset = AAD_LABEL.copy(aad, 0);
  offset = aad.writeUInt32BE(tenant.length, offset);
  offset += tenant.copy(aad, offset);
  offset = aad.writeUInt32BE(kek.length, offset);
  kek.copy(aad, offset);
  return aad;
}

/** Wraps `dek` under `kek`. `nonce` is for batch callers that draw many nonces with one randomBytes call. */
export function wrapDek(kek: Buffer, kekId: string, tenantId: string, dek: Buffer, nonce?: Buffer): Buffer {
  const out = Buffer.allocUnsafe(WRAPPED_DEK_BYTES);
  wrapDekInto(out, 0, kek, kekId, tenantId, dek, nonce ?? randomBytes(NONCE_BYTES));
  return out;
}

/** Writes the wrapped form into `out` at `offset`; the rewrap engine fills one buffer per batch this way. */
export function wrapDekInto(
  out: Buffer,
  offset: number,
  kek: Buffer,
  kekId: string,
  tenantId: string,
  dek: Buffer,
  nonce: Buffer,
): void {
  if (dek.length !== KEY_BYTES) throw new RangeError(`a DEK is ${KEY_BYTES} bytes, got ${dek.length}`);
  const cipher = createCipheriv('aes-256-gcm', kek, nonce);
  cipher.setAAD(dekAad(tenantId, kekId));
  out[offset] = WRAP_FORMAT_V1;
  nonce.copy(out, offset + 1);
  const body = cipher.update(dek);
  cipher.final();
  body.copy(out, offset + 1 + NONCE_BYTES);
  body.fill(0);
  cipher.getAuthTag().copy(out, offset + 1 + NONCE_BYTES + KEY_BYTES);
}

/** Unwraps a DEK, or throws DekUnwrapError naming the tenant and why. The caller zeroizes the result. */
export function unwrapDek(kek: Buffer, kekId: string, tenantId: string, wrapped: Buffer): Buffer {
  if (wrapped.length !== WRAPPED_DEK_BYTES) {
    throw new DekUnwrapError(tenantId, kekId, `stored form is ${wrapped.length} bytes, expected ${WRAPPED_DEK_BYTES}`);
  }
  if (wrapped[0] !== WRAP_FORMAT_V1) {
    throw new DekUnwrapError(tenantId, kekId, `unknown format version ${wrapped[0]}`);
  }
  const decipher = createDecipheriv('aes-256-gcm', kek, wrapped.subarray(1, 1 + NONCE_BYTES));
  decipher.setAAD(dekAad(tenantId, kekId));
  decipher.setAuthTag(wrapped.subarray(1 + NONCE_BYTES + KEY_BYTES));
  const dek = decipher.update(wrapped.subarray(1 + NONCE_BYTES, 1 + NONCE_BYTES + KEY_BYTES));
  try {
    decipher.final();
  } catch {
    dek.fill(0);
    throw new DekUnwrapError(tenantId, kekId, 'authentication failed (tampered, wrong key, or not this tenant)');
  }
  return dek;
}

/**
 * Key check value: an HMAC of a fixed label under the key. It identifies a key without revealing anything about it,
 * so it may be logged, stored in the registry and carried in workflow history.
 */
export function kekFingerprint(kek: Buffer): string {
  return `kcv1:${createHmac('sha256', kek).update('rekey key check value').digest('hex').slice(0, 32)}`;
}
