// The native AES-GCM addon `npm run setup` built, for the tests that call it directly; a missing one fails the test
// with the setup's reason.
import { inject } from 'vitest';
import { loadAesGcmBackend, type AesGcmBackend } from '../../src/crypto/aes-gcm';

export function testAddon(): NonNullable<AesGcmBackend['addon']> {
  const toolchain = inject('toolchain');
  if (!toolchain.aesGcmAddon)
    throw new Error(`no native AES-GCM addon: ${toolchain.aesGcmAddonMissing ?? 'not built'}`);
  return loadAesGcmBackend({ REKEY_AES_GCM: 'native', REKEY_AES_GCM_ADDON: toolchain.aesGcmAddon }).addon!;
}
