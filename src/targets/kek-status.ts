import type { KekRecord } from '../store/kek-registry';
import type { TargetRuntime } from './runtime';

export interface TargetKekStatus {
  target: string;
  currentKekId: string | null;
  /** Rows with a value per KEK label, the current one included (Talos's `stale_counts`). */
  counts: Record<string, number>;
  /** Rows with no value at all (Mycelium tenants whose DEK is not provisioned yet). */
  withoutValue: number;
  keks: KekRecord[];
}

/** The current KEK of a target and how many rows each KEK wraps: for `kek-status`, the admin API and metrics. */
export async function targetKekStatus(runtime: TargetRuntime): Promise<TargetKekStatus> {
  const [{ byLabel, withoutValue }, keks] = await Promise.all([runtime.store.countsByLabel(), runtime.registry.list()]);
  return {
    target: runtime.definition.name,
    currentKekId: keks.find((k) => k.state === 'active')?.kekId ?? null,
    counts: byLabel,
    withoutValue,
    keks,
  };
}
