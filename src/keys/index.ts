import type { KeySourceSpec } from '../targets/target';
import { EnvKeyProvider } from '../keyring/drivers/env';
import { FileKeyring } from '../keyring/drivers/file';
import type { KeyProvider } from './key-provider';
import type { StoreDriver } from '../keyring/driver';
import { MyceliumTokenSecrets } from '../keyring/drivers/mycelium-token-secret';
import type { KeyProviderName } from '../config';
import { awsRegion } from '../keyring/aws';
import { SecretsManagerKeys } from '../keyring/drivers/aws-secrets-manager';
import { KmsKeys, type KmsRequestListener } from '../keyring/drivers/aws-kms';
import { KmsWithLocalKeys } from '../keyring/drivers/kms-move-in';
import { VaultKvKeys } from '../keyring/drivers/vault-kv';
import { VaultTransitKeys } from '../keyring/drivers/vault-transit';
import { KeyMaterialError } from '../errors';

export type { KeyProvider } from './key-provider';

/** A store as a driver of its keyring, and as the callers not yet moved to the keyring take it. */
export type KeyStore = StoreDriver & KeyProvider;

export interface KeySource {
  provider: KeyProviderName;
  keyringFile?: string;
}

/**
 * The store `auto` picks, as the secrets-manager guide detects it: AWS Secrets Manager when AWS_REGION or
 * AWS_DEFAULT_REGION is set, else Vault when VAULT_ADDR is set, else the file keyring. The reason comes with it, to
 * be logged once.
 */
export function detectKeyProvider(env: NodeJS.ProcessEnv): { provider: Exclude<KeyProviderName, 'auto'>; why: string } {
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
 * The key provider a worker or application process is configured with (REKEY_KEY_PROVIDER). `onDetected` hears
 * which store `auto` picked, and why; `onRequest` each call made to AWS KMS or Vault. A remote store is read on the
 * provider's first `reload`.
 */
export function openKeyProvider(
  source: KeySource,
  env: NodeJS.ProcessEnv = process.env,
  onDetected?: (detected: { provider: string; why: string }) => void,
  onRequest?: KmsRequestListener,
): KeyStore {
  let provider = source.provider;
  if (provider === 'auto') {
    const detected = detectKeyProvider(env);
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

/** The KEKs of one target, as its definition says; `fallback` is the process's own provider ('default'). */
export function openTargetKeys(
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
