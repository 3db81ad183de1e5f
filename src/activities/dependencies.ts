import type { Pool } from 'pg';
import type { KeyProvider } from '../keys/key-provider';
import type { RekeyMetrics } from '../observability/metrics';

/** What every activity factory is built over: tests inject a real database and test keys. */
export interface ActivityDependencies {
  db: Pool;
  keys: KeyProvider;
  metrics?: RekeyMetrics;
}
