// legacy5's fallback of the retire step's change mark (docs/13, "The change mark"): a role that is neither a superuser
// nor a member of pg_read_all_stats cannot read other sessions' backend_xid, so it keeps the server-wide mark
// (pg_current_snapshot's xmin), and the step warns in its log that the rows proved under the lock may be more. rekey
// documents no grants of its own for the database; this role is given what the retire step reads and writes (schema
// rekey and its tables) and nothing else, in the test's own database.
import { randomBytes } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { Pool } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { KekRegistry } from '../../src/store/kek-registry';
import { parseTargetsConfig } from '../../src/targets/config';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { wrapRekeyDek } from '../helpers/rekey-format';
import { fingerprintIn } from '../helpers/store-keys';

describe("the retire step's change mark for a role without pg_read_all_stats", () => {
  const role = `rekey_nostats_${randomBytes(5).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  let db: TestDatabase | undefined;
  let rolePool: Pool | undefined;
  afterAll(async () => {
    await rolePool?.end();
    const admin = db?.pool;
    if (db !== undefined && admin !== undefined) {
      await admin.query(`REASSIGN OWNED BY ${role} TO CURRENT_USER`).catch(() => undefined);
      await admin.query(`DROP OWNED BY ${role}`).catch(() => undefined);
      await db.drop();
      const other = await createTestDatabase({ migrate: false });
      try {
        await other.pool.query(`DROP ROLE IF EXISTS ${role}`);
      } finally {
        await other.drop();
      }
    }
  });

  it('a role without pg_read_all_stats keeps the server-wide mark, and the retire step warns in its log, naming the role and pg_read_all_stats; the KEK still retires', async () => {
    db = await createTestDatabase();
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v2');
    try {
      const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
      await registry.seedActive('v1', await fingerprintIn(provider, 'v1'));
      await registry.register('v2', await fingerprintIn(provider, 'v2'));
      await registry.promote('v1', 'v2');
      // A DEK under v2: the rows labelled v1 (none) are proved, and the rows written since the pre-pass's mark.
      await db.pool.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ('acct-1', 'v2', $1)`,
        [wrapRekeyDek(Buffer.from(env.TEST_KEK_v2!, 'base64url'), 'v2', 'acct-1', randomBytes(32))],
      );
      await db.pool.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}' NOSUPERUSER`);
      await db.pool.query(`GRANT USAGE ON SCHEMA rekey TO ${role}`);
      await db.pool.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA rekey TO ${role}`);
      await db.pool.query(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA rekey TO ${role}`);
      const { rows } = await db.pool.query<{ member: boolean }>(
        `SELECT pg_has_role($1, 'pg_read_all_stats', 'USAGE') AS member`,
        [role],
      );
      expect(rows[0]?.member).toBe(false);
      const url = new URL(db.url);
      url.username = role;
      url.password = password;
      rolePool = new Pool({ connectionString: url.toString(), max: 4 });

      const warnings: string[] = [];
      const logger = new DefaultLogger('WARN', (entry) => {
        if (entry.level === 'WARN') warnings.push(entry.message);
      });
      const activities = createActivities({
        db: rolePool,
        keys: provider,
        targets: parseTargetsConfig('targets:\n  rekey:\n    preset: rekey\n'),
      });
      await new MockActivityEnvironment(undefined, { logger }).run(
        (args: Parameters<typeof activities.retireKek>[0]) => activities.retireKek(args),
        { target: 'rekey', from: 'v1', restoreWindowMs: 86_400_000 },
      );
      expect((await registry.require('v1')).state).toBe('retired');
      expect(warnings.filter((w) => w.includes('pg_read_all_stats'))).toEqual([
        `proof of KEK 'v1' of target 'rekey': role ${JSON.stringify(role)} cannot read other sessions' transaction ids (pg_read_all_stats): the change mark is the oldest transaction running anywhere on the server, and a transaction left open in another database makes the rows proved under the lock more`,
      ]);
    } finally {
      provider.close();
    }
  });
});
