import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

// rekey's own wrapped DEK (rekey.tenant_deks.wrapped_dek) as an application writing it with its own crypto does:
// 0x01 ‖ nonce (12) ‖ AES-256-GCM ciphertext (32) ‖ tag (16), bound to `rekey/dek/v1\0`, the tenant id and the KEK
// id, each length-prefixed (32-bit big-endian). Written from the format's description, not with rekey's codecs.

const DOMAIN = Buffer.from('rekey/dek/v1\0', 'utf8');

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** `dek` wrapped under `kek` for `tenantId`, bound to the KEK id `kekId`. */
export function wrapRekeyDek(kek: Buffer, kekId: string, tenantId: string, dek: Buffer): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, nonce);
  cipher.setAAD(Buffer.concat([DOMAIN, lengthPrefixed(tenantId), lengthPrefixed(kekId)]));
  return Buffer.concat([Buffer.from([0x01]), nonce, cipher.update(dek), cipher.final(), cipher.getAuthTag()]);
}

/** The DEK `wrapped` holds under `kek` for `tenantId` and the KEK id `kekId`; throws where it does not open so. */
export function unwrapRekeyDek(kek: Buffer, kekId: string, tenantId: string, wrapped: Buffer): Buffer {
  const decipher = createDecipheriv('aes-256-gcm', kek, wrapped.subarray(1, 13));
  decipher.setAAD(Buffer.concat([DOMAIN, lengthPrefixed(tenantId), lengthPrefixed(kekId)]));
  decipher.setAuthTag(wrapped.subarray(wrapped.length - 16));
  return Buffer.concat([decipher.update(wrapped.subarray(13, wrapped.length - 16)), decipher.final()]);
}
