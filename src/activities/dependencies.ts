import type { Client } from '@temporalio/client';
import type { Pool } from 'pg';
import type { RowCrypto } from '../crypto/row-crypto';
import type { KeyProvider } from '../keys/key-provider';
import type { RekeyMetrics } from '../observability/metrics';
import type { TargetsConfig } from '../targets/config';
import { TargetRuntimes } from '../targets/runtime';

/** What every activity factory is built over: tests inject a real database and test keys. */
export interface ActivityDependencies {
  /** The process's own database (DATABASE_URL), migrated: rekey's own target and any target naming no other. */
  db: Pool;
  /** The process's own key provider (REKEY_KEY_PROVIDER), for targets whose keys are 'default'; a function opens it when first needed. */
  keys: KeyProvider | (() => KeyProvider);
  /** The targets served; the presets alone when not given. */
  targets?: TargetsConfig | TargetRuntimes;
  /** Where target key sources and database variables are read (default: process.env). */
  env?: NodeJS.ProcessEnv;
  metrics?: RekeyMetrics;
  /** A Temporal client, for the activities that read schedules (rotation notices). */
  temporal?: Client;
  /** Where rewrap crypto runs (REKEY_CRYPTO_THREADS); the process's shared pool when not given. */
  crypto?: RowCrypto;
}

export function targetRuntimes(deps: ActivityDependencies): TargetRuntimes {
  if (deps.targets instanceof TargetRuntimes) return deps.targets;
  return new TargetRuntimes({ db: deps.db, keys: deps.keys, config: deps.targets, env: deps.env });
}
