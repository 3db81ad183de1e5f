import type { Client } from '@temporalio/client';
import type { Pool } from 'pg';
import type { RowCrypto } from '../crypto/row-crypto';
import type { StoreDriver } from '../keyring/driver';
import type { RewrapCounters } from '../rewrap/counters';
import type { TargetsConfig } from '../targets/config';
import { TargetRuntimes } from '../targets/runtime';

/** What every activity factory is built over: tests inject a real database and test keys. */
export interface ActivityDependencies {
  /** The process's own database (DATABASE_URL), migrated: rekey's own target and any target naming no other. */
  db: Pool;
  /** The process's own store's driver (REKEY_KEY_PROVIDER), for targets whose keys are 'default'; a function opens it when first needed. */
  keys: StoreDriver | (() => StoreDriver);
  /** The targets served; the presets alone when not given. */
  targets?: TargetsConfig | TargetRuntimes;
  /** Where target key sources and database variables are read (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** What the activities count (the worker's RekeyMetrics, src/observability/metrics.ts). */
  metrics?: ActivityMetrics;
  /** A Temporal client, for the activities that read schedules (rotation notices). */
  temporal?: Client;
  /** Where rewrap crypto runs (REKEY_CRYPTO_THREADS); the process's shared pool when not given. */
  crypto?: RowCrypto;
}

/**
 * The metrics the activities add to, as an interface: the module that serves them also reads the running rotations
 * through the client, which imports the workflows, which import the activities' types.
 */
export interface ActivityMetrics {
  /** Adds what one rewrap batch did (the difference between two checkpoints). */
  recordBatch(before: RewrapCounters, after: RewrapCounters, countUnreadable?: boolean): void;
  /** A rotation notice's webhook refused or did not answer. */
  noticeFailures: { inc(labels: { schedule_id: string; target: string }): void };
}

export function targetRuntimes(deps: ActivityDependencies): TargetRuntimes {
  if (deps.targets instanceof TargetRuntimes) return deps.targets;
  return new TargetRuntimes({ db: deps.db, keys: deps.keys, config: deps.targets, env: deps.env });
}
