import type { Pool } from 'pg';
import { compileFormat } from '../codec/sealed-format';
import type { StoreDriver } from '../keyring/driver';
import { KeyringCiphers } from '../keyring/keyring';
import type { RewrapDependencies } from '../rewrap/rewrap-slice';
import { KekRegistry } from '../store/kek-registry';
import { TargetStore } from '../store/target-store';
import type { TargetDefinition } from '../targets/target';

/**
 * The rewrap engine's dependencies for one target, as a rotation has them after promotion: `from` decrypt-only,
 * `to` active in the target's registry, both keys the keyring's ciphers checked against their registered
 * fingerprints (named by the rotation where the store names none: Mycelium's token secrets). The ciphers are not
 * released: the caller's engine holds their bytes for as long as it runs (a benchmark, a test).
 */
export async function engineFor(
  db: Pool,
  target: TargetDefinition,
  keys: StoreDriver,
  from = 'v1',
  to = 'v2',
): Promise<RewrapDependencies> {
  const store = new TargetStore(db, target, compileFormat(target.format));
  await store.inspect();
  const registry = new KekRegistry(db, target.name);
  const keyring = new KeyringCiphers({ driver: keys, registry, target: target.name });
  keyring.nameRotation(from, to);
  await registry.seedActive(from, await keyring.fingerprintOf(from));
  await registry.register(to, await keyring.fingerprintOf(to));
  await registry.promote(from, to);
  return {
    store,
    from: (await keyring.cipher(from)).rowKek(),
    to: (await keyring.cipher(to)).rowKek(),
    writable: ['active'],
  };
}
