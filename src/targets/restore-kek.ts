import { resolveKek } from '../keys/kek-resolver';
import type { KekRecord } from '../store/kek-registry';
import type { TargetRuntime } from './runtime';
import { InvalidRotationError, KekNotHeldError, KekRestoreRefusedError, UnknownKekError } from '../errors';

/**
 * Brings a retired KEK back to decrypt-only within its restore window (the runbook's "re-add the old KEK
 * immediately to restore service"): the store must still hold the key the registry recorded, the registry records who
 * asked and why in the same transaction, and then the store names the key again. A repeated restore changes nothing.
 */
export async function restoreKek(
  runtime: TargetRuntime,
  kekId: string,
  reason: string,
  actor: string,
): Promise<KekRecord> {
  // The key source is opened only for a KEK the registry knows: an unknown one is answered without it.
  const { registry, definition } = runtime;
  const refuse = (why: string) =>
    new KekRestoreRefusedError(`KEK '${kekId}' of target '${definition.name}' cannot be restored: ${why}`);
  if (reason.trim() === '') {
    throw new InvalidRotationError(
      `give the reason (--reason) to restore KEK '${kekId}': it is recorded with the restore`,
    );
  }
  const registered = await registry.get(kekId);
  if (!registered) throw new UnknownKekError(kekId, `the registry of target '${definition.name}'`);
  const { keys } = runtime;
  await keys.reload();
  // A store whose retire makes the key unreadable (Vault KV's soft delete) makes it readable first, proving it is the
  // registered key; if the registry then refuses, the store's retire is done again.
  let madeReadable = false;
  if (registered.state === 'retired') {
    // The material must still be there, and be the registered key, before the registry says it can be used again.
    // Found by its fingerprint: a source that names its keys only inside a rotation (Mycelium's old and current
    // token_secret) holds it under no name here.
    const held = () => resolveKek(keys, kekId, { fingerprint: registered.fingerprint }).key.fill(0);
    try {
      held();
    } catch (err) {
      if (!(err instanceof KekNotHeldError)) throw err;
      if (!keys.restoresUnreadable) throw refuse(`${keys.description} no longer holds it`);
      await keys.restore!(kekId, await registry.list());
      madeReadable = true;
      try {
        held();
      } catch (again) {
        if (again instanceof KekNotHeldError) throw refuse(`${keys.description} no longer holds it`);
        throw again;
      }
    }
  }
  let restored: KekRecord;
  try {
    restored = await registry.restore(kekId, reason.trim(), actor, refuse);
  } catch (err) {
    if (madeReadable) await keys.retire?.(kekId, await registry.list());
    throw err;
  }
  await keys.restore?.(kekId, await registry.list());
  return restored;
}
