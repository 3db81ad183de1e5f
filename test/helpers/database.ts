import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import { createDatabase, type ScratchDatabase } from '../../src/dev/databases';
import { seedTenants } from '../../src/dev/tenants';
import { migrate } from '../../src/store/migrate';

export type TestDatabase = ScratchDatabase;

/** A fresh database on the test PostgreSQL, migrated unless asked not to; `drop()` removes it. */
export function createTestDatabase(options: { migrate?: boolean } = {}): Promise<TestDatabase> {
  return createDatabase(inject('toolchain').databaseUrl, `rekey_test_${randomBytes(6).toString('hex')}`, 8, options);
}

/** Adds rekey's own schema (schema rekey) to a database, as the worker does when it opens it. */
export async function migrateDatabase(db: Pool): Promise<void> {
  const client = await db.connect();
  try {
    await migrate(client);
  } finally {
    client.release();
  }
}

/**
 * A fresh database as another system's migrations leave it (`createSchema`), then rekey's schema beside it; `shape`
 * is what `shapeOf` read before rekey touched the database (empty without it).
 */
export async function createApplicationDatabase(
  createSchema: (db: Pool) => Promise<void>,
  shapeOf?: (db: Pool) => Promise<string[]>,
): Promise<{ db: TestDatabase; shape: string[] }> {
  const db = await createTestDatabase({ migrate: false });
  await createSchema(db.pool);
  const shape = shapeOf ? await shapeOf(db.pool) : [];
  await migrateDatabase(db.pool);
  return { db, shape };
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

/** `count` fresh databases for the calling test file (deployments that share a key store), dropped after its last test. */
export function useTestDatabases(count: number): { db(index: number): TestDatabase } {
  let databases: TestDatabase[] | undefined;
  beforeAll(async () => {
    databases = await Promise.all(Array.from({ length: count }, () => createTestDatabase()));
  });
  afterAll(async () => {
    await Promise.all((databases ?? []).map((database) => database.drop()));
  });
  return {
    db(index: number) {
      const database = databases?.[index];
      if (!database)
        throw new Error(`test database ${index} is only available inside tests (the file asked for ${count})`);
      return database;
    },
  };
}

/** A scratch directory (`prefix` + random) for the calling test file, removed after its last test. */
export function useScratchDirectory(prefix: string): { readonly dir: string } {
  let dir: string | undefined;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  });
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    get dir() {
      if (!dir) throw new Error('the scratch directory is only available inside tests');
      return dir;
    },
  };
}

/**
 * Writes DEK rows as a database's past left them (rows on KEKs that were active when they were written and are not
 * now, or on KEKs the registry has not seen yet): rekey's trigger refuses such writes today, so the fixture turns it
 * off for its own statements only, in a test's private database.
 */
export async function seedPast(db: Pool, options: Omit<Parameters<typeof seedTenants>[0], 'db'>): Promise<void> {
  await db.query('ALTER TABLE rekey.tenant_deks DISABLE TRIGGER tenant_deks_insert_kek_may_wrap');
  try {
    await seedTenants({ db, ...options });
  } finally {
    await db.query('ALTER TABLE rekey.tenant_deks ENABLE TRIGGER tenant_deks_insert_kek_may_wrap');
  }
}
