import {
  refuseClaim,
  refuseKeyBytes,
  type DestroyOutcome,
  type ProcessStore,
  type ProvisionOptions,
  type RecordedKek,
  type StoreName,
} from '../driver';
import { decodeKek, InMemoryKeys, LocalKeysDriver } from '../local-keys';
import { KeyMaterialError, OperatorMustActError } from '../../errors';

const PREFIX_PATTERN = /^[A-Z][A-Z0-9_]*$/;

const KEY_RECIPE = "32 random bytes as base64url: openssl rand -base64 32 | tr '+/' '-_' | tr -d '='";
const EVERYWHERE = 'in every worker, admin API and application process';

/**
 * KEKs from environment variables, as in the gateway runbook: `<PREFIX>_KEK_<id>` holds a base64url key and
 * `<PREFIX>_CURRENT_KEK_ID` names the current one. With prefix TALOS, `TALOS_KEK_v2` works as it is.
 * The environment is read-only to rekey: every step of the lifecycle answers what the operator sets or removes.
 */
export class EnvKeyProvider extends LocalKeysDriver {
  readonly description: string;
  /** The operator sets every variable: provision says which. */
  readonly makesKeks = false;

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

  private variable(kekId: string): string {
    return `${this.prefix}_KEK_${kekId}`;
  }

  private operator(instruction: string): Promise<never> {
    return Promise.reject(new OperatorMustActError(this.description, instruction));
  }

  ownerOf(_kekId: string): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  adopt(_keyspace: string): Promise<void> {
    return this.operator('the environment records no owner: give each keyspace variables of its own prefix');
  }

  provision(kekId: string, _options?: ProvisionOptions): Promise<void> {
    return this.operator(`set ${this.variable(kekId)} (${KEY_RECIPE}) ${EVERYWHERE}`);
  }

  claim(_provisioning: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator('the environment names its keys itself: nothing to claim');
  }

  promote(_from: string, to: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator(
      `set ${this.prefix}_CURRENT_KEK_ID=${to} ${EVERYWHERE} that reads it (the registry names '${to}' active already)`,
    );
  }

  retire(kekId: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator(
      `keep ${this.variable(kekId)} set until its restore window ends: rekey says when to remove it once it is destroyed`,
    );
  }

  restore(kekId: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator(`set ${this.variable(kekId)} again ${EVERYWHERE}, to the key the registry recorded`);
  }

  /** The environment is read-only to rekey: the operator removes the variable. */
  destroy(kekId: string, _registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    return this.operator(
      `rekey cannot remove an environment variable: remove ${this.variable(kekId)} from every worker, admin API and application process (and from wherever their environment is kept: compose files, secrets, CI)`,
    );
  }

  /** Its first keyspace takes it at that keyspace's first rotation: `rekey keys claim` is refused. */
  claimKey(_kekId: string, _fingerprint: string, _keyspace: string): Promise<'claimed' | 'already'> {
    return refuseClaim(this.description);
  }

  /** Takes no key bytes: `rekey keys import` is refused, saying where to import. */
  importKek(_kekId: string, _key: Buffer, _options: { current: boolean }): Promise<'added' | 'present'> {
    return refuseKeyBytes(this.description);
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

/** The environment variables `<prefix>_KEK_<id>`, as targets' stores are compared. */
export function envStoreName(prefix: string): StoreName {
  return { key: `env ${prefix}`, what: `the environment variables ${prefix}_KEK_<id>` };
}

/** REKEY_KEY_PROVIDER=env (the default): REKEY_KEK_<id> (or REKEY_ENV_PREFIX's) and REKEY_CURRENT_KEK_ID. */
export const envStore: ProcessStore<'env'> = {
  value: 'env',
  open: ({ env }) => new EnvKeyProvider(env),
  reads: (env) => [envStoreName(env.REKEY_ENV_PREFIX || 'REKEY')],
};
