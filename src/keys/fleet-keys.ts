// What a process in a target's fleet (an application instance or a rekey worker) does with its keys against the
// registry: learn the KEKs a rotation provisioned, and say which keys it holds, by fingerprint.
import { canUnwrap } from '../envelope/kek-lifecycle';
import type { KekRecord } from '../store/kek-registry';
import type { KeyProvider } from './key-provider';

/**
 * Reloads the key source when the registry lists a KEK that is not retired and that this process lacks (a rotation
 * provisioned it, or made it active), so that the process holds it, and says so, before anything is wrapped with it.
 */
export async function reloadForRegistry(keys: KeyProvider, registered: readonly KekRecord[]): Promise<void> {
  if (registered.some((k) => canUnwrap(k.state) && !keys.has(k.kekId))) await keys.reload();
}

/** The keys this process holds, as it announces them: their ids, and the fingerprint of each. */
export function heldKeys(keys: KeyProvider): { unwrapKekIds: string[]; kekFingerprints: Record<string, string> } {
  const unwrapKekIds = keys.kekIds();
  return {
    unwrapKekIds,
    kekFingerprints: Object.fromEntries(unwrapKekIds.map((kekId) => [kekId, keys.fingerprint(kekId)])),
  };
}

/**
 * Repeats a process's announcement to its fleet, and withdraws it on stop after every announcement already under way
 * has ended: otherwise an announcement that was in flight when `stop` ran lands after the withdrawal, and a stopped
 * process stays "live" to the fleet gate until its entry ages out.
 */
export class FleetPresence {
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;

  constructor(
    private readonly announce: () => Promise<void>,
    private readonly withdraw: () => Promise<void>,
    private readonly warn: (message: string) => void,
  ) {}

  /** Announces once (its failure is the caller's), then every `everyMs` (a failure there is warned about). */
  async start(everyMs: number): Promise<void> {
    await this.now();
    this.timer = setInterval(() => {
      this.now().catch((err: unknown) => this.warn(`announcing to the fleet failed: ${String(err)}`));
    }, everyMs);
    this.timer.unref();
  }

  /** Announces now, unless stopped; `stop` waits for it. */
  now(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const run = this.announce();
    this.inFlight.add(run);
    const forget = () => this.inFlight.delete(run);
    run.then(forget, forget);
    return run;
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await Promise.allSettled([...this.inFlight]);
    await this.withdraw();
  }
}
