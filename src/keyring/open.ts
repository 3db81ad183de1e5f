// Which store a process's keys are in, and its driver: the process's own (REKEY_KEY_PROVIDER: the variable and its
// values are the operator's words, unchanged since before the keyring) and a target's own (its definition's `keys`).
// The one place that knows every driver; adding a store adds its line here and its driver file.
import type { KeySourceSpec } from '../targets/target';
import type { KeyProviderName } from '../config';
import type { StoreDriver } from './driver';
import { EnvKeyProvider } from './drivers/env';
import { FileKeyring } from './drivers/file';
import { MyceliumTokenSecrets } from './drivers/mycelium-token-secret';
import { awsRegion } from './aws';
import { SecretsManagerKeys } from './drivers/aws-secrets-manager';
import { KmsKeys, type KmsRequestListener } from './drivers/aws-kms';
import { KmsWithLocalKeys } from './drivers/kms-move-in';
import { VaultKvKeys } from './drivers/vault-kv';
import { VaultTransitKeys } from './drivers/vault-transit';
import { KeyMaterialError } from '../errors';

export interface KeySource {
  provider: KeyProviderName;
  keyringFile?: string;
}

/** The drivers REKEY_KEY_PROVIDER opens. */
export type ProcessStore =
  | EnvKeyProvider
  | FileKeyring
  | SecretsManagerKeys
  | KmsKeys
  | KmsWithLocalKeys
  | VaultKvKeys
  | VaultTransitKeys;

/**
 * The store `auto` picks, as the secrets-manager guide detects it: AWS Secrets Manager when AWS_REGION or
 * AWS_DEFAULT_REGION is set, else Vault when VAULT_ADDR is set, else the file keyring. The reason comes with it, to
 * be logged once.
 */
export function detectKeyStore(env: NodeJS.ProcessEnv): { provider: Exclude<KeyProviderName, 'auto'>; why: string } {
  if (awsRegion(env)) {
    return {
      provider: 'aws-secrets-manager',
      why: `${env.AWS_REGION?.trim() ? 'AWS_REGION' : 'AWS_DEFAULT_REGION'} is set`,
    };
  }
  if (env.VAULT_ADDR?.trim()) return { provider: 'vault', why: 'VAULT_ADDR is set' };
  return { provider: 'file', why: 'neither AWS_REGION, AWS_DEFAULT_REGION nor VAULT_ADDR is set' };
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
  onRequest?: KmsRequestListener,
): ProcessStore {
  let provider = source.provider;
  if (provider === 'auto') {
    const detected = detectKeyStore(env);
    onDetected?.(detected);
    provider = detected.provider;
  }
  if (provider === 'env') return new EnvKeyProvider(env);
  if (provider === 'aws-secrets-manager') return SecretsManagerKeys.fromEnv(env);
  if (provider === 'aws-kms') {
    const kms = KmsKeys.fromEnv(env, onRequest);
    const { localKeys } = kms.settings;
    if (localKeys === undefined) return kms;
    return new KmsWithLocalKeys(
      kms,
      localKeys === 'env' ? new EnvKeyProvider(env) : FileKeyring.open(keyringFile(source)),
    );
  }
  if (provider === 'vault') return VaultKvKeys.fromEnv(env, onRequest);
  if (provider === 'vault-transit') return VaultTransitKeys.fromEnv(env, onRequest);
  return FileKeyring.open(keyringFile(source), { create: true });
}

function keyringFile(source: KeySource): string {
  if (!source.keyringFile) {
    throw new KeyMaterialError('REKEY_KEYRING_FILE must name the keyring file', 'REKEY_KEYRING_FILE');
  }
  return source.keyringFile;
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
