import type { Pool } from 'pg';
import { compileFormat } from '../codec/sealed-format';
import type { KeyProvider } from '../keys/key-provider';
import { resolveKek } from '../keys/kek-resolver';
import type { RewrapDependencies } from '../rewrap/rewrap-slice';
import { KekRegistry } from '../store/kek-registry';
import { TargetStore } from '../store/target-store';
import type { TargetDefinition } from '../targets/target';

/**
 * The rewrap engine's dependencies for one target, as a rotation has them after promotion: `from` decrypt-only,
 * `to` active in the target's registry, both keys resolved by their registered fingerprints.
 */
export async function engineFor(
  db: Pool,
  target: TargetDefinition,
  keys: KeyProvider,
  from = 'v1',
  to = 'v2',
): Promise<RewrapDependencies> {
  const store = new TargetStore(db, target, compileFormat(target.format));
  await store.inspect();
  const registry = new KekRegistry(db, target.name);
  keys.bindRotation?.(from, to);
  await registry.seedActive(from, keys.fingerprint(from));
  await registry.register(to, keys.fingerprint(to));
  await registry.promote(from, to);
  return {
    store,
    from: resolveKek(keys, from, await registry.get(from)),
    to: resolveKek(keys, to, await registry.get(to)),
    writable: ['active'],
  };
}
