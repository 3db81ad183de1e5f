import { Pool } from 'pg';
import { checkDatabaseUrl } from '../config';
import { compileFormat } from '../codec/sealed-format';
import { openTargetKeys } from '../keys';
import type { KeyProvider } from '../keys/key-provider';
import { AppInstances } from '../store/app-instances';
import { KekRegistry } from '../store/kek-registry';
import { migrate } from '../store/migrate';
import { TargetStore } from '../store/target-store';
import { BUILTIN_TARGET } from './builtin';
import { type TargetsConfig } from './config';
import { PRESETS } from './presets';
import type { ServedTargets } from './served';
import type { TargetDefinition } from './target';
import { KeyMaterialError, TargetConfigError } from '../errors';

/** Everything one target needs at run time, opened on first use. */
export interface TargetRuntime {
  definition: TargetDefinition;
  /** The target's database; rekey's bookkeeping (schema rekey) is in the same one. */
  db: Pool;
  store: TargetStore;
  keys: KeyProvider;
  registry: KekRegistry;
  instances: AppInstances;
  /** Zeroizes the target's own keys, if they were opened (not the process's provider). */
  close(): void;
}

export interface TargetRuntimesOptions {
  /** The process's own database (DATABASE_URL), already migrated. */
  db: Pool;
  /** The process's own key provider, for targets whose keys are 'default' (a function: opened when first needed). */
  keys: KeyProvider | (() => KeyProvider);
  config?: TargetsConfig;
  env?: NodeJS.ProcessEnv;
  /** The targets this process serves (a worker: REKEY_TARGETS); every known target when not given. */
  served?: ServedTargets;
}

/**
 * The targets one worker serves. Each is opened when first used: its database (migrated, for rekey's bookkeeping),
 * its table checked against its definition, its key source read. A target that cannot open fails its own
 * rotations with the reason and leaves the others alone.
 */
export class TargetRuntimes {
  private readonly opened = new Map<string, Promise<TargetRuntime>>();
  private readonly pools = new Map<string, Pool>();

  private ownKeys: KeyProvider | undefined;

  constructor(private readonly options: TargetRuntimesOptions) {}

  /** The process's own key provider. */
  private processKeys(): KeyProvider {
    const { keys } = this.options;
    return (this.ownKeys ??= typeof keys === 'function' ? keys() : keys);
  }

  get names(): string[] {
    return [...(this.options.config?.targets.keys() ?? Object.keys(PRESETS))];
  }

  /** The targets this process serves: its activities refuse the others. */
  get served(): string[] {
    return this.options.served?.names ?? this.names;
  }

  definition(name: string): TargetDefinition {
    const definition = this.options.config?.targets.get(name) ?? (this.options.config ? undefined : PRESETS[name]);
    if (!definition) {
      throw new TargetConfigError(
        `unknown target '${name}' (known: ${this.names.join(', ')}): add it to the file REKEY_CONFIG names`,
      );
    }
    return definition;
  }

  get(name: string = BUILTIN_TARGET): Promise<TargetRuntime> {
    let runtime = this.opened.get(name);
    if (!runtime) {
      runtime = this.open(name);
      // A failure (an unreachable database, a key not set yet) is not remembered: the next use tries again.
      runtime.catch(() => this.opened.delete(name));
      this.opened.set(name, runtime);
    }
    return runtime;
  }

  private async open(name: string): Promise<TargetRuntime> {
    const definition = this.definition(name);
    const { served } = this.options;
    if (served && !served.names.includes(name)) {
      throw new TargetConfigError(
        `this worker serves ${served.names.map((n) => `'${n}'`).join(', ')} (${served.source}), not target '${name}': add it to REKEY_TARGETS, or run a worker for it on its own task queue`,
      );
    }
    const db = await this.database(definition);
    const store = new TargetStore(db, definition, compileFormat(definition.format));
    await store.inspect();
    // Key material is read when first needed: counts and the registry need none (kek-status, status).
    let keys: KeyProvider | undefined;
    const openKeys = () =>
      (keys ??= servesFormat(
        definition,
        store,
        openTargetKeys(definition.keys, () => this.processKeys(), this.options.env),
      ));
    const opened: TargetRuntime = {
      definition,
      db,
      store,
      get keys() {
        return openKeys();
      },
      registry: new KekRegistry(db, name),
      instances: new AppInstances(db, name),
      close: () => {
        if (keys !== undefined && keys !== this.ownKeys) keys.close();
      },
    };
    return opened;
  }

  /**
   * A target's database (migrated: rekey's bookkeeping is there) without opening the target: its table is not checked,
   * so a run that failed because its table is missing can still record its end there.
   */
  databaseOf(name: string): Promise<Pool> {
    return this.database(this.definition(name));
  }

  private async database(definition: TargetDefinition): Promise<Pool> {
    const env = this.options.env ?? process.env;
    const variable = definition.database.urlEnv ?? 'DATABASE_URL';
    const url = definition.database.url ?? (variable === 'DATABASE_URL' ? undefined : env[variable]);
    if (url === undefined) {
      if (variable !== 'DATABASE_URL') {
        throw new KeyMaterialError(
          `${variable} is not set: target '${definition.name}' reads its database URL from it`,
          variable,
        );
      }
      return this.options.db;
    }
    checkDatabaseUrl(
      url,
      definition.database.url !== undefined ? `target '${definition.name}': database.url` : variable,
    );
    let pool = this.pools.get(url);
    if (!pool) {
      pool = new Pool({ connectionString: url, max: 8 });
      pool.on('error', () => undefined); // an idle connection dropped by the server is replaced on next use
      this.pools.set(url, pool);
      const client = await pool.connect();
      try {
        await migrate(client);
      } finally {
        client.release();
      }
    }
    return pool;
  }

  /** The targets opened so far (metrics count their rows; nothing else is opened for them). */
  async openedRuntimes(): Promise<TargetRuntime[]> {
    const opened = await Promise.all([...this.opened.values()].map((runtime) => runtime.catch(() => undefined)));
    return opened.filter((runtime): runtime is TargetRuntime => runtime !== undefined);
  }

  /** Closes the pools this object opened and zeroizes the keys of the targets it opened (not the process's own). */
  async close(): Promise<void> {
    for (const runtime of this.opened.values()) (await runtime.catch(() => undefined))?.close();
    await Promise.all([...this.pools.values()].map((pool) => pool.end()));
  }
}

/**
 * A key store whose KEKs never leave it (AWS KMS) opens only values in its own form: a target whose format seals
 * values with key bytes is refused when its keys are first opened (the rotation's first step, before anything is
 * written), not at its first rewrap.
 */
function servesFormat(definition: TargetDefinition, store: TargetStore, keys: KeyProvider): KeyProvider {
  if (keys.rowCrypto === undefined || store.codec.kms !== undefined) return keys;
  throw new TargetConfigError(
    `target '${definition.name}': its KEKs are in ${keys.description}, which never hands out key bytes, but its format ` +
      `seals values with key bytes (only rekey's own table has a KMS form): give the target keys of its own ` +
      `(keys.provider env or file in the file REKEY_CONFIG names), or run it with another REKEY_KEY_PROVIDER`,
  );
}
