import { runner } from 'node-pg-migrate';
import type { ClientBase } from 'pg';
import { migrationsDir } from '../project-paths';

/** Applies every pending migration; safe to call concurrently (node-pg-migrate takes an advisory lock). */
export async function migrate(dbClient: ClientBase): Promise<void> {
  await runner({
    dbClient,
    dir: migrationsDir,
    direction: 'up',
    migrationsTable: 'rekey_migrations',
    checkOrder: true,
    advisoryLockMode: 'wait',
    log: () => undefined,
  });
}
