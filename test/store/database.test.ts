import { describe, expect, it } from 'vitest';
import { useTestDatabase } from '../helpers/database';

describe('test database', () => {
  const db = useTestDatabase();

  it('is migrated and round-trips a wrapped DEK row', async () => {
    const wrapped = Buffer.from([1, 2, 3, 250]);
    await db.pool.query(
      `INSERT INTO rekey.keks (target, kek_id, state, fingerprint) VALUES ('rekey', 'v1', 'active', 'x')`,
    );
    await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ('t-1', 'v1', $1)`, [
      wrapped,
    ]);
    const { rows } = await db.pool.query<{ wrapped_dek: Buffer; version: string }>(
      `SELECT wrapped_dek, version FROM rekey.tenant_deks WHERE tenant_id = 't-1'`,
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]?.wrapped_dek.equals(wrapped)).toBe(true);
    expect(rows[0]?.version).toBe('1');
  });

  it('is private to this file: a database name unique to the run', async () => {
    const { rows } = await db.pool.query<{ name: string }>('SELECT current_database() AS name');
    expect(rows[0]?.name).toMatch(/^rekey_test_[0-9a-f]{12}$/);
  });
});
