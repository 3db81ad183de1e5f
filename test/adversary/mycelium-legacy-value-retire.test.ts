// Adversary of the retire and destroy steps on Mycelium's legacy values (../shared/seed-systems.md: a v1 value is
// encrypted directly under the KEK, with no DEK between; Mycelium's guide forbids rotating the KEK while one remains).
// rekey refuses a rotation while v1 values remain (LegacyValuesRemainError), but only in its first step: the retire
// and destroy proofs read the tenant table's DEKs alone. A v1 value that appears after that step (a user row restored
// from a backup taken before `rekey migrate-dek`, a gateway of a build before envelope encryption still serving
// during the rolling restart) opens under the old token_secret alone; rekey retires that generation and, once its
// window ends, tells the operator to discard the only key that reads the value. Against PostgreSQL, with the fixture's
// own AES-GCM (test/helpers/mycelium.ts), through the worker's activities.
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import {
  createMyceliumSchema,
  gatewayReads,
  insertLegacyTotpUser,
  kekOf,
  seedMyceliumTenants,
  SYSTEM_TENANT,
} from '../helpers/mycelium';

describe('adversary: a Mycelium v1 value (under the KEK itself) that appears after the rotation began', () => {
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
  });
  const [gen1, gen2] = [randomUUID(), randomUUID()];
  const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };

  /** Rotation 1 → 2 promoted and every DEK moved to generation 2; then a user whose TOTP secret is v1 under generation 1. */
  async function rotatedThenLegacyValue() {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    databases.push(db);
    const registry = new KekRegistry(db.pool, 'mycelium');
    await registry.seedActive('1', kekFingerprint(kekOf(gen1)));
    await registry.register('2', kekFingerprint(kekOf(gen2)));
    await registry.promote('1', '2');
    await db.pool.query(`INSERT INTO public.tenant (id, name) VALUES ($1, 'system')`, [SYSTEM_TENANT]);
    await seedMyceliumTenants(db.pool, 10, kekOf(gen2), 2);
    const value = await insertLegacyTotpUser(db.pool, kekOf(gen1), 'restored@example.com', 'JBSWY3DPEHPK3PXP');
    // Only generation 1 reads it.
    expect(await gatewayReads(db.pool, kekOf(gen1), value)).toBe(value.plaintext);
    await expect(gatewayReads(db.pool, kekOf(gen2), value)).rejects.toThrow();
    const keys = createTestKeys(['x']).provider;
    return { db, registry, value, activities: createActivities({ db: db.pool, keys, env }) };
  }

  it('retire of generation 1 is refused while a v1 TOTP secret opens under generation 1 alone', async () => {
    const { registry, activities } = await rotatedThenLegacyValue();
    await expect(
      activities.retireKek({ target: 'mycelium', from: '1', restoreWindowMs: 30 * 86_400_000 }),
    ).rejects.toThrow();
    expect((await registry.require('1')).state).toBe('decrypt_only');
  });

  it('destroy of generation 1 at the end of its window is refused while a v1 TOTP secret opens under generation 1 alone: the operator is not told to discard its token_secret', async () => {
    const { db, registry, activities } = await rotatedThenLegacyValue();
    await inTransaction(db.pool, (client) => registry.retire('1', 0, client));
    const report = await activities.destroyKek({ target: 'mycelium', kekId: '1' });
    expect(report.outcome, report.detail).toBe('refused');
    expect((await registry.require('1')).state).toBe('retired');
  });
});
