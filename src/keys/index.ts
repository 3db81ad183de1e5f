import type { KeySourceSpec } from '../targets/target';
import { EnvKeyProvider } from './env-provider';
import { FileKeyring } from './file-keyring';
import type { KeyProvider } from './key-provider';
import { MyceliumTokenSecrets } from './mycelium-token-secret';
import { KeyMaterialError } from '../errors';

export type { KeyProvider } from './key-provider';

export interface KeySource {
  provider: 'env' | 'file';
  keyringFile?: string;
}

/** The key provider a worker or application process is configured with (REKEY_KEY_PROVIDER). */
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

/** The KEKs of one target, as its definition says; `fallback` is the process's own provider ('default'). */
export function openTargetKeys(
  spec: KeySourceSpec,
  fallback: () => KeyProvider,
  env: NodeJS.ProcessEnv = process.env,
): KeyProvider {
  switch (spec.provider) {
    case 'default':
      return fallback();
    case 'env':
      return new EnvKeyProvider(env, spec.prefix, spec.idPattern);
    case 'file': {
      const file = spec.file ?? (spec.fileEnv ? env[spec.fileEnv] : undefined);
      if (!file) {
        throw new KeyMaterialError(
          `${spec.fileEnv ?? 'keys.file'} must name the keyring file`,
          spec.fileEnv ?? 'keys.file',
        );
      }
      return FileKeyring.open(file);
    }
    case 'mycelium-token-secret':
      return new MyceliumTokenSecrets({ current: spec.current, old: spec.old }, env);
  }
}
