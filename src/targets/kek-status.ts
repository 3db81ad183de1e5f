import type { KekRecord } from '../store/kek-registry';
import type { TargetRuntime } from './runtime';

export interface TargetKekStatus {
  target: string;
  currentKekId: string | null;
  /** Rows with a value per KEK label, the current one included (labels no row uses are left out). */
  counts: Record<string, number>;
  /**
   * Talos's `stale_counts`: `counts` with every KEK the registry records, 0 where no row uses it, so that the
   * runbook's "once stale_counts["v1"] is 0" reads 0 after a rotation instead of finding no v1 at all.
   */
  staleCounts: Record<string, number>;
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
    staleCounts: { ...Object.fromEntries(keks.map((k) => [k.kekId, 0])), ...byLabel },
    withoutValue,
    keks,
  };
}
