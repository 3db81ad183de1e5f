// AES-256-GCM as the fixtures of other systems' data use it, on node:crypto alone: never rekey's codecs, so that a
// value a fixture writes and rekey opens (or the reverse) proves rekey reads the format, not itself.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

/** nonce (12) ‖ ciphertext ‖ tag (16) of `plaintext` under `key`, bound to `aad`, with a random nonce. */
export function seal(key: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  return Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

/** The plaintext of `sealed` (nonce ‖ ciphertext ‖ tag) under `key`, bound to `aad`; throws where it does not open. */
export function open(key: Buffer, sealed: Buffer, aad: Buffer): Buffer {
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, 12));
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([decipher.update(sealed.subarray(12, sealed.length - 16)), decipher.final()]);
}

/** `value` (text as UTF-8) after its length, 32-bit big-endian. */
export function lengthPrefixed(value: string | Buffer): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** A UUID's 16 raw bytes (any case, dashes or none). */
export const uuidBytes = (id: string): Buffer => Buffer.from(id.replace(/-/g, ''), 'hex');
