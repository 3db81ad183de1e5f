import { runner } from 'node-pg-migrate';
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { migrationsDir, projectRoot } from '../../src/project-paths';
import { readDatabaseIdentity } from '../../src/store/database-identity';
import { migrate } from '../../src/store/migrate';
import { createTestDatabase, type TestDatabase } from '../helpers/database';

async function withEmptyDatabase(fn: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await createTestDatabase({ migrate: false });
  try {
    await fn(db);
  } finally {
    await db.drop();
  }
}

/** Migrates on one pooled session, and checks the session is handed back as it came. */
async function migrateNow(db: TestDatabase): Promise<void> {
  const client = await db.pool.connect();
  try {
    const before = await client.query<{ search_path: string }>('SHOW search_path');
    await migrate(client);
    const after = await client.query<{ search_path: string }>('SHOW search_path');
    expect(after.rows[0]?.search_path).toBe(before.rows[0]?.search_path);
  } finally {
    client.release();
  }
}

async function relationsIn(db: TestDatabase, schema: string): Promise<string[]> {
  const { rows } = await db.pool.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'i', 'S', 'p') ORDER BY 1`,
    [schema],
  );
  return rows.map((r) => r.name);
}

describe('migrations', () => {
  it("add nothing to the application's schema: every table rekey creates is in schema rekey", () =>
    withEmptyDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE public.tenant (id uuid PRIMARY KEY, encrypted_dek text)`);
      const before = await relationsIn(db, 'public');
      await migrateNow(db);
      await migrateNow(db); // idempotent
      expect(await relationsIn(db, 'public')).toEqual(before);
      expect(await relationsIn(db, 'rekey')).toEqual(
        expect.arrayContaining(['keks', 'tenant_deks', 'app_instances', 'rewrap_progress', 'rekey_migrations']),
      );
    }));

  it('an installation made before the rekey schema existed migrates: its KEKs, DEKs, fleet and progress move into it as target rekey', () =>
    withEmptyDatabase(async (db) => {
      // The layout of the first release: its one migration, run in public, tracked in public.rekey_migrations.
      const client = await db.pool.connect();
      try {
        await runner({
          dbClient: client,
          dir: migrationsDir,
          direction: 'up',
          count: 1,
          migrationsTable: 'rekey_migrations',
          log: () => undefined,
        });
      } finally {
        client.release();
      }
      await db.pool.query(`
        INSERT INTO public.keks (kek_id, state, fingerprint) VALUES ('v1', 'decrypt_only', 'kcv1:a'), ('v2', 'active', 'kcv1:b');
        INSERT INTO public.tenant_deks (tenant_id, kek_id, wrapped_dek, version) VALUES ('t-1', 'v2', '\\x01', 7);
        INSERT INTO public.app_instances (instance_id, unwrap_kek_ids, wrap_kek_id) VALUES ('pod-1', '{v1,v2}', 'v2');
        INSERT INTO public.rewrap_progress (progress_key, cursor, done, rewrapped) VALUES ('run/pass-1/slice-0', 't-1', true, 1);`);

      await migrateNow(db);

      expect(await relationsIn(db, 'public')).toEqual([]);
      const keks = await db.pool.query(`SELECT target, kek_id, state FROM rekey.keks ORDER BY kek_id`);
      expect(keks.rows).toEqual([
        { target: 'rekey', kek_id: 'v1', state: 'decrypt_only' },
        { target: 'rekey', kek_id: 'v2', state: 'active' },
      ]);
      const deks = await db.pool.query(`SELECT tenant_id, kek_id, version FROM rekey.tenant_deks`);
      expect(deks.rows).toEqual([{ tenant_id: 't-1', kek_id: 'v2', version: '7' }]);
      const fleet = await db.pool.query(`SELECT target, instance_id FROM rekey.app_instances`);
      expect(fleet.rows).toEqual([{ target: 'rekey', instance_id: 'pod-1' }]);
      const progress = await db.pool.query(`SELECT target, progress_key, rewrapped FROM rekey.rewrap_progress`);
      expect(progress.rows).toEqual([{ target: 'rekey', progress_key: 'run/pass-1/slice-0', rewrapped: '1' }]);
      const applied = await db.pool.query<{ name: string }>(`SELECT name FROM rekey.rekey_migrations ORDER BY id`);
      expect(applied.rows.map((r) => r.name)).toEqual([
        '1732300000000_envelope-schema',
        '1764000000000_targets',
        '1764100000000_kek-may-wrap',
        '1764200000000_instance-fingerprints',
        '1764300000000_worker-presence',
        '1764400000000_field-migration',
        '1764500000000_kek-restore-window',
        '1764610000000_run-history',
        '1764620000000_database-identity',
        '1764630000000_kek-step-events',
      ]);
    }));

  it('give a database one identity, made once: migrating again keeps it, and the guide’s command (docs/07) gives a copy a new one', () =>
    withEmptyDatabase(async (db) => {
      await migrateNow(db);
      const identity = () => readDatabaseIdentity(db.pool, 'the test database');
      const first = await identity();
      expect(first).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      await migrateNow(db);
      expect(await identity()).toBe(first);
      expect((await db.pool.query('SELECT count(*)::int AS n FROM rekey.database_identity')).rows).toEqual([{ n: 1 }]);
      await expect(db.pool.query('INSERT INTO rekey.database_identity DEFAULT VALUES')).rejects.toThrow(
        /duplicate key/,
      );
      // docs/07, upgrading: the statement the guide gives a copy of a database that lives beside its original.
      const readme = fs.readFileSync(path.join(projectRoot, 'docs', '07-upgrading.md'), 'utf8');
      const statement = /psql "\$COPY_DATABASE_URL" -c '([^']+)'/.exec(readme)?.[1];
      expect(statement).toBe('UPDATE rekey.database_identity SET id = gen_random_uuid()');
      await db.pool.query(statement!);
      expect(await identity()).not.toBe(first);
    }));

  it('a database rekey has not migrated has no identity, and says what to do', () =>
    withEmptyDatabase(async (db) => {
      await expect(readDatabaseIdentity(db.pool, "the database of target 'rekey'")).rejects.toThrow(
        "the database of target 'rekey' has no rekey identity yet (rekey.database_identity): start a rekey worker on it once (it migrates the database), then try again",
      );
    }));
});
