import { decodeKek, InMemoryKeys, LocalKeyProvider, type DestroyOutcome } from './key-provider';
import { KeyMaterialError } from '../errors';

const PREFIX_PATTERN = /^[A-Z][A-Z0-9_]*$/;

/**
 * KEKs from environment variables, as in the gateway runbook: `<PREFIX>_KEK_<id>` holds a base64url key and
 * `<PREFIX>_CURRENT_KEK_ID` names the current one. With prefix TALOS, `TALOS_KEK_v2` works as it is.
 * The environment is read-only, so this provider cannot generate KEKs.
 */
export class EnvKeyProvider extends LocalKeyProvider {
  readonly description: string;

  private readonly idPattern: RegExp | undefined;

  constructor(
    private readonly env: NodeJS.ProcessEnv = process.env,
    readonly prefix: string = env.REKEY_ENV_PREFIX || 'REKEY',
    /** A target's own rule for KEK ids (Talos: lower-case), checked on top of the general one. */
    idPattern?: string,
  ) {
    if (!PREFIX_PATTERN.test(prefix)) {
      throw new KeyMaterialError(
        `REKEY_ENV_PREFIX '${prefix}' must be upper-case letters, digits and '_' (e.g. TALOS)`,
        'REKEY_ENV_PREFIX',
      );
    }
    const description = `environment variables ${prefix}_KEK_<id>`;
    super(description);
    this.description = description;
    this.idPattern = idPattern === undefined ? undefined : new RegExp(idPattern);
    this.keys.replaceWith(this.load());
  }

  /** The environment is read-only to rekey: the operator removes the variable. */
  destroy(kekId: string): Promise<DestroyOutcome> {
    return Promise.resolve({
      destroyed: false,
      detail: `rekey cannot remove an environment variable: remove ${this.prefix}_KEK_${kekId} from every worker, admin API and application process (and from wherever their environment is kept: compose files, secrets, CI)`,
    });
  }

  protected load(): InMemoryKeys {
    const keys = new InMemoryKeys(this.description);
    const marker = `${this.prefix}_KEK_`;
    try {
      for (const [name, value] of Object.entries(this.env)) {
        // An empty variable means unset, as compose files pass `REKEY_KEK_v2=${REKEY_KEK_v2:-}` through.
        if (!name.startsWith(marker) || value === undefined || value.trim() === '') continue;
        const kekId = name.slice(marker.length);
        if (this.idPattern && !this.idPattern.test(kekId)) {
          throw new KeyMaterialError(
            `${name}: KEK id '${kekId}' does not match this target's rule ${this.idPattern.source}, so the application ignores it; rename the variable`,
            name,
          );
        }
        keys.add(kekId, decodeKek(value, name), name);
      }
      if (keys.ids().length === 0) {
        throw new KeyMaterialError(
          `no KEK in the environment: set ${marker}<id> to 32 random bytes in base64url (openssl rand -base64 32 | tr '+/' '-_' | tr -d '=')`,
          marker,
        );
      }
      const currentVar = `${this.prefix}_CURRENT_KEK_ID`;
      const current = this.env[currentVar]?.trim() || undefined;
      if (current !== undefined && !keys.has(current)) {
        throw new KeyMaterialError(`${currentVar} names '${current}', but ${marker}${current} is not set`, currentVar);
      }
      this.configuredCurrentKekId = current;
      return keys;
    } catch (err) {
      keys.clear();
      throw err;
    }
  }
}
