import type { Pool } from 'pg';
import { openPool } from '../store/connect';
import { checkDatabaseUrl } from '../config';
import { compileFormat } from '../codec/sealed-format';
import { openTargetDriver } from '../keyring/open';
import type { StoreDriver } from '../keyring/driver';
import { AppInstances } from '../store/app-instances';
import { KekRegistry, registryHolders } from '../store/kek-registry';
import { Keyring } from '../keyring/keyring';
import { keyspaceOf, type Keyspace } from '../rotation/identity';
import { readDatabaseIdentity } from '../store/database-identity';
import { migrate } from '../store/migrate';
import { TargetStore } from '../store/target-store';
import { BUILTIN_TARGET } from './builtin';
import { type TargetsConfig } from './config';
import { PRESETS } from './presets';
import type { ServedTargets } from './served';
import { describeTable, type TargetDefinition } from './target';
import { KeyMaterialError, KeyspaceMismatchError, RetireRefusedError, TargetConfigError } from '../errors';

/** Everything one target needs at run time, opened on first use. */
export interface TargetRuntime {
  definition: TargetDefinition;
  /** The target's database; rekey's bookkeeping (schema rekey) is in the same one. */
  db: Pool;
  /** What the target rotates: its table in its database (by the database's identity). */
  keyspace: Keyspace;
  store: TargetStore;
  /** The one owner of the lifecycle of the target's KEKs (provision, promote, retire, restore, destroy). */
  keyring: Keyring;
  registry: KekRegistry;
  instances: AppInstances;
  /** Zeroizes the target's own keys, if they were opened (not the process's provider). */
  close(): void;
}

export interface TargetRuntimesOptions {
  /** The process's own database (DATABASE_URL), already migrated. */
  db: Pool;
  /** The process's own key provider, for targets whose keys are 'default' (a function: opened when first needed). */
  keys: StoreDriver | (() => StoreDriver);
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
  private readonly pools = new Map<string, Promise<Pool>>();
  private readonly identities = new Map<Pool, Promise<string>>();

  private ownKeys: StoreDriver | undefined;

  constructor(private readonly options: TargetRuntimesOptions) {}

  /** The process's own key provider. */
  private processKeys(): StoreDriver {
    const { keys } = this.options;
    return (this.ownKeys ??= typeof keys === 'function' ? keys() : keys);
  }

  get names(): string[] {
    return [...(this.options.config?.targets.keys() ?? Object.keys(PRESETS))];
  }

  /** Whether this process's configuration has a target of that name (served or not). */
  has(name: string): boolean {
    return this.options.config ? this.options.config.targets.has(name) : name in PRESETS;
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

  /**
   * The target of an activity's input, refused (KeyspaceMismatchError, naming both) when the input names a keyspace
   * that is not the one the target resolves to here: a step of another database's rotation that reached this worker
   * must not touch this database's rows or keys. Inputs without a keyspace (older builds' runs) are not checked.
   */
  async forRequest({ target, keyspace }: { target?: string; keyspace?: string }): Promise<TargetRuntime> {
    const runtime = await this.get(target);
    if (keyspace !== undefined && keyspace !== runtime.keyspace.id) {
      throw new KeyspaceMismatchError(
        `this step belongs to keyspace ${keyspace}, but target '${runtime.definition.name}' is keyspace ${runtime.keyspace.id} on this worker (database ${runtime.keyspace.databaseId}): ` +
          `a worker of another database polls this task queue; give each database's workers a task queue of their own (REKEY_TASK_QUEUE)`,
      );
    }
    return runtime;
  }

  /**
   * The keyspace of a target (its database's identity and its table), without opening its table or its keys: what a
   * CLI or the admin API needs to name its rotations.
   */
  async keyspace(name: string): Promise<Keyspace> {
    const definition = this.definition(name);
    const db = await this.database(definition);
    return keyspaceOf(await this.identity(db, definition), describeTable(definition.table));
  }

  private identity(db: Pool, definition: TargetDefinition): Promise<string> {
    let identity = this.identities.get(db);
    if (!identity) {
      identity = readDatabaseIdentity(db, `the database of target '${definition.name}'`);
      identity.catch(() => this.identities.delete(db));
      this.identities.set(db, identity);
    }
    return identity;
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
    const keyspace = await this.keyspace(name);
    await this.refuseSharedKeyspace(definition, keyspace);
    const store = new TargetStore(db, definition, compileFormat(definition.format));
    await store.inspect();
    // Key material is read when first needed: counts and the registry need none (kek-status, status).
    let keys: StoreDriver | undefined;
    const openKeys = (): StoreDriver => {
      if (keys === undefined) {
        const opened = openTargetDriver(definition.keys, () => this.processKeys(), this.options.env);
        // A store whose KEKs never leave it refuses a format sealed with key bytes here, before anything is written.
        opened.requireFormat(store.codec, definition.name);
        keys = opened;
      }
      return keys;
    };
    const registry = new KekRegistry(db, name);
    const otherRegistries = (kekId: string, fingerprint: string, action: 'retiring' | 'destroying') =>
      this.refuseWhileOtherRegistriesHold(db, name, kekId, fingerprint, action);
    let keyring: Keyring | undefined;
    const opened: TargetRuntime = {
      definition,
      db,
      keyspace,
      store,
      get keyring() {
        return (keyring ??= new Keyring({
          // Opened when first used: a registry-only step (an unknown KEK's restore) never reads the store.
          driver: openKeys,
          db,
          registry,
          keyspace: keyspace.id,
          target: name,
          otherRegistries,
        }));
      },
      registry,
      instances: new AppInstances(db, name),
      close: () => {
        if (keys !== undefined && keys !== this.ownKeys) keys.close();
      },
    };
    return opened;
  }

  /**
   * The definitive check behind the configuration's (which compares how targets name their databases): no other target
   * of this configuration resolves to the same database identity and table, such as one reached by two URLs. Only
   * targets naming the same table can; a target whose database cannot be reached now cannot rotate now either, and
   * meets this check when it is opened.
   */
  private async refuseSharedKeyspace(definition: TargetDefinition, keyspace: Keyspace): Promise<void> {
    for (const other of this.names) {
      if (other === definition.name) continue;
      const otherDefinition = this.definition(other);
      if (describeTable(otherDefinition.table) !== keyspace.table) continue;
      let theirs: Keyspace;
      try {
        theirs = await this.keyspace(other);
      } catch {
        continue;
      }
      if (theirs.id === keyspace.id) {
        throw new TargetConfigError(
          `targets '${other}' and '${definition.name}' are one keyspace: both are table ${keyspace.table} in database ${keyspace.databaseId} ` +
            `(two URLs of one database): two registries and two rotations of one table would each move the other's rows. ` +
            `Remove one of them from the file REKEY_CONFIG names, or point it at its own table`,
        );
      }
    }
  }

  /**
   * Every database this process serves (its own, and each target's that resolves), with the targets in it: where a
   * destruction proves that no registry still holds a KEK. `unresolved` names the targets whose database URL is not
   * set here.
   */
  async databases(): Promise<{
    databases: { db: Pool; databaseId: string; targets: string[] }[];
    unresolved: string[];
  }> {
    const byPool = new Map<Pool, { db: Pool; databaseId: string; targets: string[] }>();
    const unresolved: string[] = [];
    for (const name of this.names) {
      const definition = this.definition(name);
      let db: Pool;
      try {
        db = await this.database(definition);
      } catch (err) {
        if (err instanceof KeyMaterialError) {
          unresolved.push(name);
          continue;
        }
        throw err;
      }
      let entry = byPool.get(db);
      if (!entry) {
        entry = { db, databaseId: await this.identity(db, definition), targets: [] };
        byPool.set(db, entry);
      }
      entry.targets.push(name);
    }
    return { databases: [...byPool.values()], unresolved };
  }

  /**
   * Before a KEK is retired or its material destroyed: no registry this process can see (every target's, in every database it
   * serves, whichever process registered them) holds a key with its fingerprint in any state but destroyed, but the
   * KEK's own row (finding 1 of issue 24). Returns what it checked, for the result.
   */
  async refuseWhileOtherRegistriesHold(
    db: Pool,
    target: string,
    kekId: string,
    fingerprint: string,
    action: 'retiring' | 'destroying' = 'destroying',
  ): Promise<string> {
    const { databases, unresolved } = await this.databases();
    const holders: string[] = [];
    for (const { db: other, databaseId } of databases) {
      for (const holder of await registryHolders(other, fingerprint)) {
        const own = other === db && holder.target === target && holder.kekId === kekId;
        if (!own)
          holders.push(`'${holder.kekId}' of target '${holder.target}' (${holder.state}) in database ${databaseId}`);
      }
    }
    if (holders.length > 0) {
      throw new RetireRefusedError(
        `KEK '${kekId}' (${fingerprint}) is still in another registry as ${holders.join(', ')}: not ${action} it. ` +
          `A key store belongs to one keyspace; retire it there first, or give that target keys of its own`,
      );
    }
    const checked = databases
      .map((d) => `target${d.targets.length > 1 ? 's' : ''} ${d.targets.join(', ')} in database ${d.databaseId}`)
      .join('; ');
    return (
      `rekey checked the registries it can see (every target's in the databases of ${checked}) and none holds this key` +
      (unresolved.length > 0 ? `; not seen: ${unresolved.join(', ')} (database URL not set here)` : '') +
      `; a process of another configuration or another database is not among them`
    );
  }

  /**
   * A target's database (migrated: rekey's bookkeeping is there) without opening the target: its table is not checked,
   * so a run that failed because its table is missing can still record its end there.
   */
  databaseOf(name: string): Promise<Pool> {
    return this.database(this.definition(name));
  }

  private database(definition: TargetDefinition): Promise<Pool> {
    const env = this.options.env ?? process.env;
    const variable = definition.database.urlEnv ?? 'DATABASE_URL';
    const url = definition.database.url ?? (variable === 'DATABASE_URL' ? undefined : env[variable]);
    if (url === undefined) {
      if (variable !== 'DATABASE_URL') {
        return Promise.reject(
          new KeyMaterialError(
            `${variable} is not set: target '${definition.name}' reads its database URL from it`,
            variable,
          ),
        );
      }
      return Promise.resolve(this.options.db);
    }
    checkDatabaseUrl(
      url,
      definition.database.url !== undefined ? `target '${definition.name}': database.url` : variable,
    );
    let pool = this.pools.get(url);
    if (!pool) {
      pool = (async () => {
        const opened = openPool(url, { max: 8 });
        opened.on('error', () => undefined); // an idle connection dropped by the server is replaced on next use
        try {
          const client = await opened.connect();
          try {
            await migrate(client);
          } finally {
            client.release();
          }
        } catch (err) {
          // Not remembered: the next use connects again (the database may be back).
          this.pools.delete(url);
          await opened.end().catch(() => undefined);
          throw err;
        }
        return opened;
      })();
      this.pools.set(url, pool);
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
    const pools = await Promise.all([...this.pools.values()].map((pool) => pool.catch(() => undefined)));
    await Promise.all(pools.flatMap((pool) => (pool ? [pool.end()] : [])));
  }
}

/** The keyspace of a target whose table is in `db` (already migrated): its database's identity and its table. */
export async function targetKeyspace(
  db: Pool,
  definition: TargetDefinition = PRESETS[BUILTIN_TARGET]!,
): Promise<Keyspace> {
  return keyspaceOf(
    await readDatabaseIdentity(db, `the database of target '${definition.name}'`),
    describeTable(definition.table),
  );
}
