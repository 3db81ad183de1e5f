import { sharedRowCrypto, type RowCrypto } from '../crypto/row-crypto';
import { resolveKek, type ResolvedKek } from '../keys/kek-resolver';
import type { TargetRuntime } from '../targets/runtime';

/**
 * Runs `use` with the KEKs of a rotation, each checked against the fingerprint the target's registry recorded, and
 * zeroizes the copies afterwards, whatever happens.
 */
export async function withKeks<T>(
  runtime: TargetRuntime,
  rotation: { from: string; to: string },
  kekIds: string[],
  use: (keks: ResolvedKek[]) => Promise<T>,
): Promise<T> {
  runtime.keys.bindRotation?.(rotation.from, rotation.to);
  const resolved: ResolvedKek[] = [];
  try {
    for (const kekId of kekIds) {
      const registered = await runtime.registry.get(kekId);
      // A KEK another process provisioned, or a remote store not read yet: read the source again first.
      if (!runtime.keys.has(kekId)) await runtime.keys.reload();
      resolved.push(resolveKek(runtime.keys, kekId, registered));
    }
    return await use(resolved);
  } finally {
    for (const kek of resolved) kek.key.fill(0);
  }
}

/** Where a target's row crypto runs: in its key store when the store does it (KMS), else `local` or the process's pool. */
export function rowCryptoOf(runtime: TargetRuntime, local?: RowCrypto): RowCrypto {
  // The process's pool is made only if something runs on it: a store that does the crypto may never need it.
  const worker = () => local ?? sharedRowCrypto();
  return runtime.keys.rowCrypto?.(worker) ?? worker();
}
