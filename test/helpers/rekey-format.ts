import { lengthPrefixed, open, seal } from './gcm';

// rekey's own wrapped DEK (rekey.tenant_deks.wrapped_dek) as an application writing it with its own crypto does:
// 0x01 ‖ nonce (12) ‖ AES-256-GCM ciphertext (32) ‖ tag (16), bound to `rekey/dek/v1\0`, the tenant id and the KEK
// id, each length-prefixed (32-bit big-endian). Written from the format's description, not with rekey's codecs.

const DOMAIN = Buffer.from('rekey/dek/v1\0', 'utf8');

const aad = (tenantId: string, kekId: string) =>
  Buffer.concat([DOMAIN, lengthPrefixed(tenantId), lengthPrefixed(kekId)]);

/** `dek` wrapped under `kek` for `tenantId`, bound to the KEK id `kekId`. */
export function wrapRekeyDek(kek: Buffer, kekId: string, tenantId: string, dek: Buffer): Buffer {
  return Buffer.concat([Buffer.from([0x01]), seal(kek, dek, aad(tenantId, kekId))]);
}

/** The DEK `wrapped` holds under `kek` for `tenantId` and the KEK id `kekId`; throws where it does not open so. */
export function unwrapRekeyDek(kek: Buffer, kekId: string, tenantId: string, wrapped: Buffer): Buffer {
  return open(kek, wrapped.subarray(1), aad(tenantId, kekId));
}
