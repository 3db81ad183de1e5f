// Which store a process's keys are in, and its driver: the process's own (REKEY_KEY_PROVIDER: the variable and its
// values are the operator's words, unchanged since before the keyring; each store's descriptor, listed in stores.ts)
// and a target's own (its definition's `keys`).
import type { KeySourceSpec } from '../targets/target';
import type { ProcessStoreContext, StoreDriver } from './driver';
import { EnvKeyProvider } from './drivers/env';
import { FileKeyring } from './drivers/file';
import { MyceliumTokenSecrets } from './drivers/mycelium-token-secret';
import { detectKeyStore, processStore, type KeyProviderName } from './stores';
import { KeyMaterialError } from '../errors';

export { detectKeyStore } from './stores';

export interface KeySource {
  provider: KeyProviderName;
  keyringFile?: string;
}

/**
 * The driver of the store a worker or application process is configured with (REKEY_KEY_PROVIDER). `onDetected`
 * hears which store `auto` picked, and why; `onRequest` each call made to AWS KMS or Vault. A remote store is read on
 * the driver's first `reload`.
 */
export function openStoreDriver(
  source: KeySource,
  env: NodeJS.ProcessEnv = process.env,
  onDetected?: (detected: { provider: string; why: string }) => void,
  onRequest?: ProcessStoreContext['onRequest'],
): StoreDriver {
  let provider = source.provider;
  if (provider === 'auto') {
    const detected = detectKeyStore(env);
    onDetected?.(detected);
    provider = detected.provider;
  }
  return processStore(provider).open({ env, keyringFile: source.keyringFile, onRequest });
}

/** The driver of one target's store, as its definition says; `fallback` is the process's own ('default'). */
export function openTargetDriver(
  spec: KeySourceSpec,
  fallback: () => StoreDriver,
  env: NodeJS.ProcessEnv = process.env,
): StoreDriver {
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
