// Adversary of the retire and destroy proofs on Mycelium's own trap (../shared/seed-systems.md: a DEK the gateway
// provisions lazily keeps kek_version at the column's DEFAULT 1, whatever token_secret wrapped it). On the first
// rotation (1 → 2) such rows are labelled with `from` and the proofs find them (test/targets/retire-proof's finding 4).
// On the second (2 → 3) they are not: a gateway instance still on generation 2's token_secret during the grace period
// onboards a tenant whose DEK is sealed under generation 2 and labelled 1, a generation already destroyed. Retire and
// destroy of generation 2 prove only the rows labelled 2, so generation 2 is retired and the operator is told to
// remove its token_secret, the only key that opens that tenant's DEK. Against PostgreSQL, with the fixture's own
// AES-GCM (test/helpers/mycelium.ts), through the worker's activities.
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { createMyceliumSchema, kekOf, seedMyceliumTenants, unwrapDek } from '../helpers/mycelium';

describe("adversary: Mycelium's second rotation (2 → 3) and a tenant onboarded under generation 2 with kek_version left at 1", () => {
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
  });
  const [gen1, gen2, gen3] = [randomUUID(), randomUUID(), randomUUID()];
  // The worker during rotation 2 → 3: the old token_secret (generation 2) and the new one (generation 3).
  const env = { MYC_OLD_TOKEN_SECRET: gen2, MYC_TOKEN_SECRET: gen3 };

  /**
   * The registry as rotation 1 → 2 (destroyed since) and rotation 2 → 3 (promoted, rows moved) leave it, the rows on
   * generation 3, and the one tenant a gateway instance still on generation 2 onboarded during the grace period.
   */
  async function secondRotationInGrace() {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    databases.push(db);
    const registry = new KekRegistry(db.pool, 'mycelium');
    const fingerprint = (secret: string) => kekFingerprint(kekOf(secret));
    await registry.seedActive('1', fingerprint(gen1));
    await registry.register('2', fingerprint(gen2));
    await registry.promote('1', '2');
    await inTransaction(db.pool, (client) => registry.retire('1', 0, client));
    await registry.transition('1', 'destroyed');
    await registry.register('3', fingerprint(gen3));
    await registry.promote('2', '3');
    await seedMyceliumTenants(db.pool, 10, kekOf(gen3), 3);
    const [late] = await seedMyceliumTenants(db.pool, 1, kekOf(gen2), 1);
    // Only generation 2 opens it.
    const { rows } = await db.pool.query<{ encrypted_dek: string }>(
      'SELECT encrypted_dek FROM public.tenant WHERE id = $1',
      [late!.id],
    );
    expect(unwrapDek(kekOf(gen2), late!.id, rows[0]!.encrypted_dek).equals(late!.dek!)).toBe(true);
    expect(() => unwrapDek(kekOf(gen3), late!.id, rows[0]!.encrypted_dek)).toThrow();
    return { db, registry, late: late!, activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }) };
  }

  it('retire of generation 2 is refused while that tenant (labelled 1) opens under generation 2 alone', async () => {
    const { registry, late, activities } = await secondRotationInGrace();
    await expect(activities.retireKek({ target: 'mycelium', from: '2', restoreWindowMs: 3_600_000 })).rejects.toThrow(
      late.id,
    );
    expect((await registry.require('2')).state).toBe('decrypt_only');
  });

  it('destroy of generation 2 at the end of its window is refused while that tenant (labelled 1) opens under generation 2 alone: the operator is not told to remove its token_secret', async () => {
    const { db, registry, late, activities } = await secondRotationInGrace();
    await inTransaction(db.pool, (client) => registry.retire('2', 0, client));
    const report = await activities.destroyKek({ target: 'mycelium', kekId: '2' });
    expect(report.outcome, report.detail).toBe('refused');
    expect(report.neededRows?.map((r) => r.tenantId)).toContain(late.id);
    expect((await registry.require('2')).state).toBe('retired');
  });
});
