import { KeyMaterialError } from '../envelope/errors';
import { EnvKeyProvider } from './env-provider';
import { FileKeyring } from './file-keyring';
import type { KeyProvider } from './key-provider';

export type { KeyProvider } from './key-provider';

export interface KeySource {
  provider: 'env' | 'file';
  keyringFile?: string;
}

/** The key provider a worker or application process is configured with. */
export function openKeyProvider(source: KeySource, env: NodeJS.ProcessEnv = process.env): KeyProvider {
  if (source.provider === 'env') return new EnvKeyProvider(env);
  if (!source.keyringFile) {
    throw new KeyMaterialError(
      'REKEY_KEYRING_FILE must name the keyring file for the file provider',
      'REKEY_KEYRING_FILE',
    );
  }
  return FileKeyring.open(source.keyringFile, { create: true });
}
