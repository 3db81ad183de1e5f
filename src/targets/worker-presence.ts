// A worker process announces itself to the fleet of every target whose current KEK is in rekey's registry: the KEKs
// it holds, with their fingerprints. The fleet gate then counts it like an application instance, so a worker that
// holds another key under the new KEK's id (or none) holds the promotion, instead of failing its slices halfway
// through a rewrap. Like an application instance, it reloads its key source when the registry lists a KEK it lacks.
import os from 'node:os';
import { FleetPresence, heldKeys, reloadForRegistry } from '../keyring/fleet-keys';
import type { TargetRuntime, TargetRuntimes } from './runtime';

const ANNOUNCE_EVERY_MS = 10_000;

export class WorkerPresence {
  readonly instanceId: string;
  private readonly everyMs: number;
  private readonly presence: FleetPresence;
  private readonly announced = new Set<TargetRuntime>();

  constructor(
    private readonly targets: TargetRuntimes,
    private readonly warn: (message: string) => void,
    options: { instanceId?: string; everyMs?: number } = {},
  ) {
    this.instanceId = options.instanceId ?? `worker-${os.hostname()}-${process.pid}`;
    this.everyMs = options.everyMs ?? ANNOUNCE_EVERY_MS;
    this.presence = new FleetPresence(
      () => this.announceToEach(),
      () => this.withdrawFromEach(),
      (message) => this.warn(`worker ${this.instanceId}: ${message}`),
    );
  }

  start(): Promise<void> {
    return this.presence.start(this.everyMs);
  }

  /** Announces to each registry-owned target this worker can open; a target it cannot open is left out. */
  announce(): Promise<void> {
    return this.presence.now();
  }

  private async announceToEach(): Promise<void> {
    for (const name of this.targets.served) {
      if (this.targets.definition(name).currentKek.owner !== 'registry') continue;
      let runtime: TargetRuntime;
      try {
        runtime = await this.targets.get(name);
      } catch {
        continue; // no keys or no table for it here: this worker does not serve it, and says nothing
      }
      await reloadForRegistry(runtime.keyring, await runtime.registry.list());
      await runtime.instances.announce({
        instanceId: this.instanceId,
        ...(await heldKeys(runtime.keyring)),
        wrapKekId: null,
        role: 'worker',
      });
      this.announced.add(runtime);
    }
  }

  /** Withdraws from every fleet it announced to, after any announcement under way. */
  stop(): Promise<void> {
    return this.presence.stop();
  }

  private async withdrawFromEach(): Promise<void> {
    for (const runtime of this.announced) {
      await runtime.instances.withdraw(this.instanceId).catch(() => undefined);
    }
  }
}
