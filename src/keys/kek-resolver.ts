import { canUnwrap, type KekState } from '../envelope/kek-lifecycle';
import type { KeyProvider } from './key-provider';
import { KekFingerprintMismatchError, KekNotHeldError, KekRetiredError, UnknownKekError } from '../errors';

/** A KEK's bytes for one unit of work, copied out of the provider; the holder zeroizes `key` when done. */
export interface ResolvedKek {
  kekId: string;
  fingerprint: string;
  key: Buffer;
}

/**
 * The key for `kekId`, trusted by fingerprint, not by name: once the registry has recorded a KEK, only a key with
 * that fingerprint is used, and a key held under the same name with another fingerprint is refused (a second
 * `openssl rand` named v2 would otherwise wrap DEKs that the rest of the fleet cannot read).
 */
export function resolveKek(
  provider: KeyProvider,
  kekId: string,
  registered: { fingerprint: string; state?: KekState; target?: string } | undefined,
): ResolvedKek {
  if (registered?.state !== undefined && !canUnwrap(registered.state)) {
    throw new KekRetiredError(kekId, registered.target ?? '?', registered.state);
  }
  if (registered === undefined) {
    if (!provider.has(kekId)) throw new UnknownKekError(kekId, provider.description);
    const fingerprint = provider.fingerprint(kekId);
    return { kekId, fingerprint, key: provider.copyByFingerprint(fingerprint)! };
  }
  if (provider.has(kekId) && provider.fingerprint(kekId) !== registered.fingerprint) {
    throw new KekFingerprintMismatchError(kekId, registered.fingerprint, provider.fingerprint(kekId));
  }
  const key = provider.copyByFingerprint(registered.fingerprint);
  if (!key) throw new KekNotHeldError(kekId, registered.fingerprint, provider.description);
  return { kekId, fingerprint: registered.fingerprint, key };
}
