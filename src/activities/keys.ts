import { sharedRowCrypto, type RowCrypto } from '../crypto/row-crypto';
import { resolveKek, type ResolvedKek } from '../keys/kek-resolver';
import type { TargetRuntime } from '../targets/runtime';
import type { ProofKeys } from '../rewrap/still-on';
import type { KekRecord } from '../store/kek-registry';
import { RetireRefusedError } from '../errors';

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

/**
 * Runs `use` with the KEKs a proof of the rows labelled `label` tries (see ProofKeys): the active KEK, then every
 * decrypt-only KEK this process holds, each checked against the registry's fingerprint; and `label`'s own KEK while
 * the registry lets it unwrap. Zeroizes every copy afterwards. No active KEK: nothing may take the rows.
 */
export async function withProofKeys<T>(
  runtime: TargetRuntime,
  label: string,
  use: (keys: ProofKeys) => Promise<T>,
): Promise<T> {
  const { keys, registry, definition } = runtime;
  await keys.reload();
  const records = await registry.list();
  const active = records.find((r) => r.state === 'active');
  if (!active || active.kekId === label) {
    throw new RetireRefusedError(
      `target '${definition.name}' has no active KEK other than '${label}': no KEK can take the rows labelled with it`,
    );
  }
  // Resolved by the registry's fingerprints alone: no rotation binds names to a source's keys here.
  const resolved: ResolvedKek[] = [];
  const held = (record: KekRecord): ResolvedKek | undefined => {
    try {
      const kek = resolveKek(keys, record.kekId, record);
      resolved.push(kek);
      return kek;
    } catch {
      return undefined; // not held here, or not the registered key: rows under it are not proved by it
    }
  };
  try {
    const activeKek = resolveKek(keys, active.kekId, active);
    resolved.push(activeKek);
    const others = records.filter((r) => r.state === 'decrypt_only' && r.kekId !== label).flatMap((r) => held(r) ?? []);
    const own = records.find((r) => r.kekId === label && r.state === 'decrypt_only');
    const labelKek = own && held(own);
    return await use({ label, active: activeKek, others, ...(labelKek && { labelKek }) });
  } finally {
    for (const kek of resolved) kek.key.fill(0);
  }
}
