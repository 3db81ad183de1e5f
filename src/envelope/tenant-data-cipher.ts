import { randomBytes } from 'node:crypto';
import { REKEY_DATA_FORMAT } from '../codec/formats';
import { compileFormat, NONCE_BYTES } from '../codec/sealed-format';
import { CiphertextError, UnreadableValueError } from '../errors';

/** Tenant data ciphertexts are `v2:` then base64url(nonce | ciphertext | tag), as in the envelope migration guide. */
export const CIPHERTEXT_PREFIX = 'v2:';

const codec = compileFormat(REKEY_DATA_FORMAT);

export function encryptTenantData(dek: Buffer, tenantId: string, plaintext: string | Buffer): string {
  const bytes = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
  return codec.seal(dek, bytes, { tenant_id: tenantId }, '', randomBytes(NONCE_BYTES))[0] as string;
}

export function decryptTenantData(dek: Buffer, tenantId: string, ciphertext: string): Buffer {
  try {
    return codec.open(dek, { tenant_id: tenantId, ciphertext }, '');
  } catch (err) {
    if (err instanceof UnreadableValueError) throw new CiphertextError(tenantId, err.reason);
    throw err;
  }
}
