// The durable step after retirement: a retired KEK keeps its material for its restore window, then is destroyed
// where its store can (unless an operator restored it meanwhile, or a row still names it). One workflow per KEK of a
// keyspace, started by the rotation that retired it and left running when that rotation ends (parent close policy
// ABANDON); its id is made by src/rotation/identity.ts (destroyWorkflowIdOf).
import { sleep } from '@temporalio/workflow';
import type { DestroyReport } from '../activities/kek';
import { steps } from './activity-proxies';

export interface DestroyKekInput {
  target: string;
  kekId: string;
  restoreWindowMs: number;
  /** The keyspace (`<database id>/<schema.table>`) the step checks; absent in destructions of older builds. */
  keyspace?: string;
}

export async function destroyRetiredKek({
  target,
  kekId,
  restoreWindowMs,
  keyspace,
}: DestroyKekInput): Promise<DestroyReport> {
  await sleep(restoreWindowMs);
  for (;;) {
    // The window is measured by the database's clock: the step says how long is left if this timer ran early.
    const report = await steps.destroyKek({ target, kekId, ...(keyspace !== undefined && { keyspace }) });
    if (report.outcome !== 'not-yet') return report;
    await sleep(Math.max(report.waitMs ?? 60_000, 1_000));
  }
}
