import type { StepOutcome } from '../keyring/keyring';
import type { KekRecord } from '../store/kek-registry';
import type { TargetRuntime } from './runtime';
import { InvalidRotationError, KekRestoreRefusedError } from '../errors';

/**
 * Brings a retired KEK back to decrypt-only within its restore window (the runbook's "re-add the old KEK
 * immediately to restore service"), through the target's keyring: the store must still hold the key the registry
 * recorded (or make it readable again), the registry records who asked and why in the same transaction, and then the
 * store names the key again. A repeated restore changes nothing. A store rekey may not write (the environment) answers
 * what the operator must still do there (`operatorMust`, e.g. set the variable again in every process): every surface
 * shows it in these words.
 */
export async function restoreKek(
  runtime: TargetRuntime,
  kekId: string,
  reason: string,
  actor: string,
): Promise<KekRecord & StepOutcome> {
  if (reason.trim() === '') {
    throw new InvalidRotationError(
      `give the reason (--reason) to restore KEK '${kekId}': it is recorded with the restore`,
    );
  }
  // A window that has ended is said first: the key store's part (set the key again, make it readable) would ask the
  // operator for a key the registry then refuses. The keyring checks it again under the registry's lock.
  const record = await runtime.registry.get(kekId);
  if (
    record?.state === 'retired' &&
    record.restorableUntil &&
    record.restorableUntil <= (await runtime.registry.now())
  ) {
    throw new KekRestoreRefusedError(
      `KEK '${kekId}' of target '${runtime.definition.name}' cannot be restored: its restore window ended at ${record.restorableUntil.toISOString()}; it is being destroyed`,
    );
  }
  // The key source is opened only for a KEK the registry knows: an unknown one is answered without it.
  return runtime.keyring.restore(kekId, reason, actor);
}
