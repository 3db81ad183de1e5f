import { BUILTIN_TARGET } from '../targets/builtin';
import { randomBytes } from 'node:crypto';
import { KEY_BYTES } from '../envelope/dek-wrapping';
import { KeyMaterialError } from '../envelope/errors';
import { nextKekId } from '../keys/file-keyring';
import { formatDuration } from '../rotation/durations';
import { checkAgainstKeks, parseRotationRequest, type RotationRequest } from '../rotation/rotation-input';
import { AppInstances } from '../store/app-instances';
import { checkout } from '../store/connect';
import { KekRegistry } from '../store/kek-registry';
import { TenantDekStore } from '../store/tenant-deks';
import type { ActivityDependencies } from './dependencies';

export interface FleetReadiness {
  live: number;
  canUnwrap: number;
  wrapsWith: number;
  /** Live instances that cannot unwrap with the KEK yet (first few). */
  cannotUnwrap: string[];
  /** Live instances that do not wrap with the KEK yet (first few). */
  notWrapping: string[];
}

/** Thrown by retire when DEKs still use the KEK: retrying now would not change that. */
export class RetireRefusedError extends Error {
  override readonly name = 'RetireRefusedError';
}

export function createKekActivities({ db, keys }: ActivityDependencies) {
  const registry = new KekRegistry(db, BUILTIN_TARGET);
  const deks = new TenantDekStore(db);
  const instances = new AppInstances(db, BUILTIN_TARGET);

  return {
    /**
     * The first step: the request against the registry and the key provider. Returns the resolved `from`, and
     * why there is nothing to do when the active KEK is younger than `minKekAge`.
     */
    async validateRotation(request: RotationRequest): Promise<{ from: string; nothingToDo?: string }> {
      const settings = parseRotationRequest(request);
      await keys.reload();
      const active = await registry.active();
      const from = settings.from === 'current' ? active?.kekId : settings.from;
      const fromRecord = from === undefined ? undefined : await registry.get(from);
      const toRecord = settings.to === 'new' ? undefined : await registry.get(settings.to);
      const resolved = checkAgainstKeks(settings, {
        activeKekId: active?.kekId,
        from: { registryState: fromRecord?.state, inProvider: from !== undefined && keys.has(from) },
        to: settings.to === 'new' ? undefined : { registryState: toRecord?.state, inProvider: keys.has(settings.to) },
        providerCanGenerate: keys.generate !== undefined,
        providerDescription: keys.description,
      });
      const age = active?.activatedAt ? Date.now() - active.activatedAt.getTime() : Infinity;
      if (age < settings.minKekAgeMs) {
        return {
          from: resolved,
          nothingToDo: `KEK '${resolved}' became active ${formatDuration(age)} ago; rotations are due after ${formatDuration(settings.minKekAgeMs)}`,
        };
      }
      return { from: resolved };
    },

    /** The id a generated KEK will get. Read-only, so a retry is harmless; provisionKek creates it. */
    async proposeKekId(): Promise<string> {
      await keys.reload();
      const known = new Set([...keys.kekIds(), ...(await registry.list()).map((k) => k.kekId)]);
      return nextKekId([...known]);
    },

    /**
     * The new KEK exists in the provider (generated if asked and not there yet), is recorded in the registry with
     * its fingerprint, and this worker can wrap and unwrap with it. Idempotent.
     */
    async provisionKek({ kekId, generate }: { kekId: string; generate: boolean }): Promise<{ fingerprint: string }> {
      await keys.reload();
      if (!keys.has(kekId)) {
        if (!generate || !keys.generate) {
          throw new KeyMaterialError(`KEK '${kekId}' is not in ${keys.description}`, keys.description);
        }
        await keys.generate(kekId);
      }
      const fingerprint = keys.fingerprint(kekId);
      await registry.register(kekId, fingerprint);
      const probe = randomBytes(KEY_BYTES);
      const unwrapped = keys.unwrap(kekId, 'rekey-self-test', keys.wrap(kekId, 'rekey-self-test', probe));
      const works = unwrapped.equals(probe);
      probe.fill(0);
      unwrapped.fill(0);
      if (!works) throw new KeyMaterialError(`KEK '${kekId}' failed its wrap/unwrap self-test`, keys.description);
      return { fingerprint };
    },

    async fleetReadiness({ kekId, liveWithinMs }: { kekId: string; liveWithinMs: number }): Promise<FleetReadiness> {
      const live = await instances.live(liveWithinMs);
      const cannotUnwrap = live.filter((i) => !i.unwrapKekIds.includes(kekId)).map((i) => i.instanceId);
      const notWrapping = live.filter((i) => i.wrapKekId !== kekId).map((i) => i.instanceId);
      return {
        live: live.length,
        canUnwrap: live.length - cannotUnwrap.length,
        wrapsWith: live.length - notWrapping.length,
        cannotUnwrap: cannotUnwrap.slice(0, 10),
        notWrapping: notWrapping.slice(0, 10),
      };
    },

    /** `to` becomes active and `from` decrypt-only, in one transaction; a retry after success is a no-op. */
    async promoteKek({ from, to }: { from: string; to: string }): Promise<void> {
      await registry.promote(from, to);
    },

    /** Retires `from` only if no DEK uses it at this moment; otherwise refuses and says how many do. */
    async retireKek({ from }: { from: string }): Promise<{ retiredAt: string }> {
      const client = await checkout(db);
      try {
        await client.query('BEGIN');
        await client.query('SELECT 1 FROM rekey.keks WHERE target = $1 AND kek_id = $2 FOR UPDATE', [
          BUILTIN_TARGET,
          from,
        ]);
        const { rows } = await client.query<{ n: string }>(
          'SELECT count(*) AS n FROM rekey.tenant_deks WHERE kek_id = $1',
          [from],
        );
        const stillUsing = Number(rows[0]?.n ?? 0);
        if (stillUsing > 0) {
          throw new RetireRefusedError(`KEK '${from}' still wraps ${stillUsing} DEK(s): not retiring it`);
        }
        const retired = await registry.transition(from, 'retired', client);
        await client.query('COMMIT');
        return { retiredAt: (retired.retiredAt ?? new Date()).toISOString() };
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined); // a broken connection rolls back by itself
        throw err;
      } finally {
        client.release();
      }
    },

    async kekStatus() {
      return deks.kekStatus();
    },
  };
}
