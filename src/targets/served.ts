// Which targets a worker process serves: it needs the keys of those alone. A worker beside Mycelium's database holds
// Mycelium's token secrets and nothing of rekey's own provider; one beside Talos's holds TALOS_KEK_<id>.
import type { TargetsConfig } from './config';
import { TargetConfigError } from '../errors';

export interface ServedTargets {
  /** The targets served, in the order given (every known target when none is named). */
  names: string[];
  /** Where the list comes from, for the start log and for messages. */
  source: 'REKEY_TARGETS' | 'REKEY_DEFAULT_TARGET' | 'every target';
}

/**
 * The targets a worker serves: the comma-separated `REKEY_TARGETS`, else the one `REKEY_DEFAULT_TARGET` names, else
 * every target (the presets and the file REKEY_CONFIG names). An unknown name is refused, naming the variable.
 */
export function servedTargets(config: TargetsConfig, env: NodeJS.ProcessEnv = process.env): ServedTargets {
  const known = [...config.targets.keys()];
  const listed = env.REKEY_TARGETS?.trim();
  if (listed) {
    const names = [...new Set(listed.split(',').map((name) => name.trim()))];
    const unknown = names.filter((name) => name === '' || !config.targets.has(name));
    if (unknown.length > 0) {
      throw new TargetConfigError(
        `REKEY_TARGETS names ${unknown.map((name) => `'${name}'`).join(', ')}, which ${unknown.length === 1 ? 'is' : 'are'} not a target (known: ${known.join(', ')}); separate names with commas`,
      );
    }
    return { names, source: 'REKEY_TARGETS' };
  }
  if (env.REKEY_DEFAULT_TARGET?.trim()) return { names: [config.defaultTarget], source: 'REKEY_DEFAULT_TARGET' };
  return { names: known, source: 'every target' };
}
