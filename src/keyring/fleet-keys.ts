// What a process in a target's fleet (an application instance or a rekey worker) does with its keys against the
// registry: learn the KEKs a rotation provisioned, and say which keys it holds, by fingerprint.
import { canUnwrap } from '../envelope/kek-lifecycle';
import type { KeyringCiphers } from './keyring';
import type { KekRecord } from '../store/kek-registry';

/**
 * Reloads the key store when the registry lists a KEK that is not retired and that this process lacks (a rotation
 * provisioned it, or made it active), so that the process holds it, and says so, before anything is wrapped with it.
 */
export async function reloadForRegistry(keyring: KeyringCiphers, registered: readonly KekRecord[]): Promise<void> {
  const held = new Set((await keyring.held()).map((k) => k.kekId));
  if (registered.some((k) => canUnwrap(k.state) && !held.has(k.kekId))) await keyring.reload();
}

/** The keys this process holds, as it announces them: their ids, and the fingerprint of each. */
export async function heldKeys(
  keyring: KeyringCiphers,
): Promise<{ unwrapKekIds: string[]; kekFingerprints: Record<string, string> }> {
  // One entry per id: a store whose old and current key a step names alike (a migration's) announces the current one.
  const byId = new Map<string, string>();
  for (const kek of await keyring.held()) if (!byId.has(kek.kekId)) byId.set(kek.kekId, kek.fingerprint);
  const held = [...byId]
    .map(([kekId, fingerprint]) => ({ kekId, fingerprint }))
    .sort((x, y) => (x.kekId < y.kekId ? -1 : x.kekId > y.kekId ? 1 : 0));
  return {
    unwrapKekIds: held.map((k) => k.kekId),
    kekFingerprints: Object.fromEntries(held.map((k) => [k.kekId, k.fingerprint])),
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
