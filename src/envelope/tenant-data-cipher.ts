import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { NONCE_BYTES, TAG_BYTES } from './dek-wrapping';
import { CiphertextError } from './errors';

/** Tenant data ciphertexts are `v2:` then base64url(nonce | ciphertext | tag), as in the envelope migration guide. */
export const CIPHERTEXT_PREFIX = 'v2:';

function aad(tenantId: string): Buffer {
  return Buffer.from(`rekey/data/v2\0${tenantId}`, 'utf8');
}

export function encryptTenantData(dek: Buffer, tenantId: string, plaintext: string | Buffer): string {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', dek, nonce);
  cipher.setAAD(aad(tenantId));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return CIPHERTEXT_PREFIX + Buffer.concat([nonce, body, cipher.getAuthTag()]).toString('base64url');
}

export function decryptTenantData(dek: Buffer, tenantId: string, ciphertext: string): Buffer {
  if (!ciphertext.startsWith(CIPHERTEXT_PREFIX)) {
    throw new CiphertextError(tenantId, `expected the '${CIPHERTEXT_PREFIX}' prefix`);
  }
  const raw = Buffer.from(ciphertext.slice(CIPHERTEXT_PREFIX.length), 'base64url');
  if (raw.length < NONCE_BYTES + TAG_BYTES) throw new CiphertextError(tenantId, 'too short');
  const decipher = createDecipheriv('aes-256-gcm', dek, raw.subarray(0, NONCE_BYTES));
  decipher.setAAD(aad(tenantId));
  decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
  const plaintext = decipher.update(raw.subarray(NONCE_BYTES, raw.length - TAG_BYTES));
  try {
    return Buffer.concat([plaintext, decipher.final()]);
  } catch {
    throw new CiphertextError(tenantId, 'authentication failed');
  }
}
