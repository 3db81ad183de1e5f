import fs from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import type { Pool } from 'pg';
import { openPool } from '../store/connect';
import type { KeyspaceLookup } from '../client/rotations';
import { checkDatabaseUrl, loadConfig, loadKeyConfig } from '../config';
import { openStoreDriver } from '../keyring/open';
import type { StoreDriver } from '../keyring/driver';
import { FileKeyring } from '../keyring/drivers/file';
import { loadTargetsConfig } from '../targets/config';
import { TargetRuntimes } from '../targets/runtime';
import { webUiBase, webUiLink } from '../rotation/web-ui-link';
import { CliError } from '../errors';
import { temporalConnectionOptions } from '../temporal-connection';

export interface GlobalOptions {
  address: string;
  namespace: string;
  taskQueue: string;
  json?: boolean;
}

/** Connections opened on first use and closed once, whatever the command did. */
export class CliContext {
  private connection?: Connection;
  private temporalClient?: Client;
  private pool?: Pool;
  private runtimes?: TargetRuntimes;

  constructor(
    readonly options: GlobalOptions,
    /** The environment the command runs with: every setting it reads comes from here, never process.env. */
    readonly env: NodeJS.ProcessEnv = process.env,
    readonly out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  ) {
    // A malformed REKEY_WEB_UI_URL is said before a command does anything, not after it started a rotation.
    webUiBase(env);
  }

  async temporal(): Promise<Client> {
    if (!this.temporalClient) {
      const options = temporalConnectionOptions(this.options.address, this.env);
      try {
        this.connection = await Connection.connect({ ...options, connectTimeout: '5s' });
      } catch (err) {
        throw new CliError(
          `cannot reach Temporal at ${this.options.address}: ${(err as Error).message} (set TEMPORAL_ADDRESS or --address)`,
        );
      }
      this.temporalClient = new Client({ connection: this.connection, namespace: this.options.namespace });
    }
    return this.temporalClient;
  }

  db(): Pool {
    if (!this.pool) {
      if (!this.env.DATABASE_URL)
        throw new CliError('DATABASE_URL is not set: point it at the database that holds the tenant DEKs', 'invalid');
      const url = checkDatabaseUrl(this.env.DATABASE_URL, 'DATABASE_URL');
      this.pool = openPool(url, { max: 2 });
      // An idle connection the server ends (`status --watch` across a failover) is replaced on next use, not a crash.
      this.pool.on('error', () => undefined);
    }
    return this.pool;
  }

  /** The targets of REKEY_CONFIG (or the presets), over DATABASE_URL; keys are read only if a command needs them. */
  targets(): TargetRuntimes {
    this.runtimes ??= new TargetRuntimes({
      db: this.db(),
      keys: () => {
        const config = loadConfig(this.env);
        return openStoreDriver(
          { provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE },
          this.env,
        );
      },
      config: loadTargetsConfig(this.env),
      env: this.env,
    });
    return this.runtimes;
  }

  /**
   * A target's keyspace in the database DATABASE_URL names (through REKEY_CONFIG): what names its rotations. Asked
   * only when a command names a rotation by its target; a name that is no target is taken as a workflow id.
   */
  get keyspaceOf(): KeyspaceLookup {
    return async (target) => (this.targets().has(target) ? this.targets().keyspace(target) : undefined);
  }

  /**
   * The keyring file given, else REKEY_KEYRING_FILE. `create` (the default) makes an empty one where there is none;
   * without it, a missing keyring is not found (exit 3), saying how to make one, instead of an empty list.
   */
  keyring(file?: string, options: { create?: boolean } = {}): FileKeyring {
    const path = file ?? this.env.REKEY_KEYRING_FILE;
    if (!path) throw new CliError('no keyring file: pass --keyring or set REKEY_KEYRING_FILE', 'invalid');
    const create = options.create ?? true;
    if (!create && !fs.existsSync(path)) {
      throw new CliError(
        `no keyring at ${path}${file === undefined ? ' (REKEY_KEYRING_FILE)' : ''}: check the path, or create it with 'rekey keys generate --keyring ${path}'`,
        'not-found',
      );
    }
    return FileKeyring.open(path, { create });
  }

  /**
   * The key store `rekey keys` works on: the keyring file given with --keyring, else the process's provider, decided
   * as every rekey process decides it (keyProviderOf: REKEY_KEY_PROVIDER, else the keyring file when REKEY_KEYRING_FILE
   * is set, else the environment), read. `create: false` for the
   * commands that only read it (a missing keyring file is then an error, not made empty).
   */
  async keyStore(file?: string, options: { create?: boolean } = {}): Promise<StoreDriver> {
    if (file !== undefined) return this.keyring(file, options);
    const config = loadKeyConfig(this.env);
    // The store the worker reads with the same environment (keyProviderOf): a keyring file opened here as a file.
    if (config.REKEY_KEY_PROVIDER === 'file') return this.keyring(undefined, options);
    const keys = openStoreDriver(
      { provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE },
      this.env,
    );
    await keys.reload();
    return keys;
  }

  /** Prints `value` as JSON with --json, else the human lines. */
  print(value: unknown, human: () => string[]): void {
    if (this.options.json) this.out(JSON.stringify(value, null, 2));
    else for (const line of human()) this.out(line);
  }

  /** The Temporal Web UI's page of a workflow, under REKEY_WEB_UI_URL (default the dev server's). */
  webUiUrl(workflowId: string): string {
    return this.webUiPage(`workflows/${encodeURIComponent(workflowId)}`);
  }

  /** A page of the Temporal Web UI in this namespace: `workflows/<id>`, `schedules/<id>`. */
  webUiPage(page: string): string {
    return webUiLink(this.env, this.options.namespace, page);
  }

  async close(): Promise<void> {
    await this.runtimes?.close();
    await this.connection?.close();
    await this.pool?.end();
  }
}
