import type { Probe } from '../targets/target';
import { targetRuntimes, type ActivityDependencies } from './dependencies';

/** Whether the application has done what a step it owns needs, and how rekey knows. */
export interface Evidence {
  satisfied: boolean;
  /** configuration: rekey's own configuration names `to` as current; probe: the target's probe says so. */
  by?: 'configuration' | 'probe' | 'registry';
  detail: string;
  /** No probe can show it: only an operator's confirmation moves the run on. */
  confirmationOnly?: boolean;
}

const PROBE_TIMEOUT_MS = 10_000;

function at(document: unknown, path: string): unknown {
  let value: unknown = document;
  for (const key of path.split('.')) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

function names(value: unknown, kekId: string): boolean {
  return value === kekId || (Array.isArray(value) && value.includes(kekId));
}

export function createApplicationActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);
  const env = deps.env ?? process.env;

  async function probe(
    probeSpec: Probe,
    step: 'promote' | 'retire',
    from: string,
    to: string,
    since: Date,
    target: string,
  ): Promise<Evidence> {
    if (probeSpec.kind === 'rows-written') {
      const { store } = await targets.get(target);
      const written = await store.writtenSince(to, probeSpec.timestampColumn, since);
      return written
        ? {
            satisfied: true,
            by: 'probe',
            detail: `the application wrote a row under '${to}' after ${since.toISOString()}`,
          }
        : { satisfied: false, detail: `no row written under '${to}' since ${since.toISOString()} yet` };
    }
    const token = probeSpec.tokenEnv ? env[probeSpec.tokenEnv] : undefined;
    let document: unknown;
    try {
      const response = await fetch(probeSpec.url, {
        headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
      });
      if (!response.ok) return { satisfied: false, detail: `GET ${probeSpec.url} answered ${response.status}` };
      document = await response.json();
    } catch (err) {
      return { satisfied: false, detail: `GET ${probeSpec.url} failed: ${(err as Error).message}` };
    }
    const value = at(document, probeSpec.path);
    if (step === 'promote') {
      return names(value, to)
        ? { satisfied: true, by: 'probe', detail: `${probeSpec.url} ${probeSpec.path} names '${to}'` }
        : { satisfied: false, detail: `${probeSpec.url} ${probeSpec.path} is ${JSON.stringify(value)}, not '${to}'` };
    }
    return value !== undefined && !names(value, from)
      ? { satisfied: true, by: 'probe', detail: `${probeSpec.url} ${probeSpec.path} no longer names '${from}'` }
      : {
          satisfied: false,
          detail: `${probeSpec.url} ${probeSpec.path} is ${JSON.stringify(value)}, which still names '${from}'`,
        };
  }

  return {
    /**
     * Evidence that the application did what a step it owns needs: for promotion, that it wraps with `to`; for
     * retirement, that it no longer holds `from`. Never fails for a probe that does not answer: the run asks again.
     */
    async applicationEvidence(args: {
      target: string;
      keyspace?: string;
      step: 'promote' | 'retire';
      from: string;
      to: string;
      /** When the rotation began, by the target database's clock (ISO 8601): rows written after it are evidence. */
      since: string;
    }): Promise<Evidence> {
      const { target, step, from, to } = args;
      const runtime = await targets.forRequest(args);
      const owner = runtime.definition.currentKek;
      if (owner.owner === 'registry') {
        return { satisfied: true, by: 'registry', detail: 'the application reads the current KEK from the registry' };
      }
      if (step === 'promote') {
        const configured = owner.currentKekEnv
          ? env[owner.currentKekEnv]?.trim() || undefined
          : (runtime.keyring.nameRotation(from, to), await runtime.keyring.configuredCurrent());
        const source = owner.currentKekEnv ?? runtime.keyring.description;
        if (configured === to) {
          return { satisfied: true, by: 'configuration', detail: `${source} names '${to}' as the current KEK` };
        }
      }
      const spec = owner[step].probe;
      if (!spec)
        return { satisfied: false, detail: 'no probe: waiting for an operator to confirm', confirmationOnly: true };
      return probe(spec, step, from, to, new Date(args.since), target);
    },
  };
}
