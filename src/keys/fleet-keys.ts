// What a process in a target's fleet (an application instance or a rekey worker) does with its keys against the
// registry: learn the KEKs a rotation provisioned, and say which keys it holds, by fingerprint.
import type { KekRecord } from '../store/kek-registry';
import type { KeyProvider } from './key-provider';

/**
 * Reloads the key source when the registry lists a KEK that is not retired and that this process lacks (a rotation
 * provisioned it, or made it active), so that the process holds it, and says so, before anything is wrapped with it.
 */
export async function reloadForRegistry(keys: KeyProvider, registered: readonly KekRecord[]): Promise<void> {
  if (registered.some((k) => k.state !== 'retired' && !keys.has(k.kekId))) await keys.reload();
}

/** The keys this process holds, as it announces them: their ids, and the fingerprint of each. */
export function heldKeys(keys: KeyProvider): { unwrapKekIds: string[]; kekFingerprints: Record<string, string> } {
  const unwrapKekIds = keys.kekIds();
  return {
    unwrapKekIds,
    kekFingerprints: Object.fromEntries(unwrapKekIds.map((kekId) => [kekId, keys.fingerprint(kekId)])),
  };
}
