// The stores a process can be configured with (REKEY_KEY_PROVIDER), in the order the variable lists its values. Each
// driver's module exports its store's descriptor (its value, how `auto` detects it, how it opens from its settings in
// the environment, which stores it reads); a line here is its registration, and nothing else names the stores.
import type { ProcessStore } from './driver';
import { envStore } from './drivers/env';
import { fileStore } from './drivers/file';
import { secretsManagerStore } from './drivers/aws-secrets-manager';
import { kmsStore } from './drivers/kms-move-in';
import { vaultKvStore } from './drivers/vault-kv';
import { vaultTransitStore } from './drivers/vault-transit';

export const PROCESS_STORES = [
  envStore,
  fileStore,
  secretsManagerStore,
  kmsStore,
  vaultKvStore,
  vaultTransitStore,
] as const;

/** A value of REKEY_KEY_PROVIDER: a store's, or `auto` (detected as the secrets-manager guide does). */
export type KeyProviderName = (typeof PROCESS_STORES)[number]['value'] | 'auto';

/** REKEY_KEY_PROVIDER's values, `auto` last. */
export const KEY_PROVIDERS: readonly [KeyProviderName, ...KeyProviderName[]] = [
  PROCESS_STORES[0].value,
  ...PROCESS_STORES.slice(1).map((store) => store.value),
  'auto',
];

/** The store REKEY_KEY_PROVIDER=`value` names. */
export function processStore(value: Exclude<KeyProviderName, 'auto'>): ProcessStore {
  return PROCESS_STORES.find((store) => store.value === value)!;
}

/**
 * The store `auto` picks, and why: the stores that say how they are detected, by their order (AWS Secrets Manager when
 * AWS_REGION or AWS_DEFAULT_REGION is set, else Vault KV when VAULT_ADDR is set), else the fallback (the keyring file).
 */
export function detectKeyStore(env: NodeJS.ProcessEnv): { provider: Exclude<KeyProviderName, 'auto'>; why: string } {
  const detected = PROCESS_STORES.flatMap((store) => (store.auto ? [{ store, auto: store.auto }] : [])).sort(
    (a, b) => a.auto.order - b.auto.order,
  );
  for (const { store, auto } of detected) {
    const why = auto.why?.(env);
    if (why !== undefined) return { provider: store.value, why };
  }
  const fallback = detected.find(({ auto }) => auto.why === undefined)!;
  const variables = detected.flatMap(({ auto }) => auto.variables);
  const names = `${variables.slice(0, -1).join(', ')} nor ${variables.at(-1)!}`;
  return { provider: fallback.store.value, why: `neither ${names} is set` };
}
