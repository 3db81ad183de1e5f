import { randomBytes } from 'node:crypto';
import type { Pool } from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import { createDatabase, type ScratchDatabase } from '../../src/dev/databases';

export type TestDatabase = ScratchDatabase;

/** A fresh database on the test PostgreSQL, migrated unless asked not to; `drop()` removes it. */
export function createTestDatabase(options: { migrate?: boolean } = {}): Promise<TestDatabase> {
  return createDatabase(inject('toolchain').databaseUrl, `rekey_test_${randomBytes(6).toString('hex')}`, 8, options);
}

/** One fresh database for the calling test file, dropped after its last test. */
export function useTestDatabase(): { readonly pool: Pool; readonly url: string } {
  let database: TestDatabase | undefined;
  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database?.drop();
  });
  return {
    get pool() {
      if (!database) throw new Error('the test database is only available inside tests');
      return database.pool;
    },
    get url() {
      if (!database) throw new Error('the test database is only available inside tests');
      return database.url;
    },
  };
}
