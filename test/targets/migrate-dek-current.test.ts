// Issue 25: `rekey migrate-dek --target mycelium` as Mycelium's guide types it (no generation named) on a database
// whose registry records no KEK yet: the table says which generation is current, proven before it is used.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { createMyceliumSchema, kekOf, seedLegacyInventory, seedMyceliumTenants } from '../helpers/mycelium';

const plan = { target: 'mycelium', slices: 1, dryRun: true };

async function withMycelium(use: (db: TestDatabase) => Promise<void>): Promise<void> {
  const { db } = await createApplicationDatabase(createMyceliumSchema);
  try {
    await use(db);
  } finally {
    await db.drop();
  }
}

const activities = (db: TestDatabase, current: string) =>
  createActivities({ db: db.pool, keys: testKeys(['v1']), env: { MYC_TOKEN_SECRET: current } });

const registered = async (db: TestDatabase) =>
  (await db.pool.query(`SELECT kek_id FROM rekey.keks WHERE target = 'mycelium'`)).rowCount;

describe('migrate-dek without a generation, on a registry that records none: the table says it', () => {
  it('every DEK on one generation: that generation, and the plan says why', () =>
    withMycelium(async (db) => {
      const gen1 = randomUUID();
      await seedLegacyInventory(db.pool, kekOf(gen1), { tenants: 9, users: 2 });
      const planned = await activities(db, gen1).planFieldMigration(plan);
      expect(planned.kekId).toBe('1');
      expect(planned.kekChoice).toBe(
        "KEK 1: rekey's registry records none yet, and every DEK of public.tenant (6) is labelled 1",
      );
      expect(await registered(db)).toBe(0); // a dry run records nothing
    }));

  it("no DEK yet: the default of the label column (Mycelium's kek_version defaults to 1)", () =>
    withMycelium(async (db) => {
      const gen1 = randomUUID();
      await seedMyceliumTenants(db.pool, 5, null, 1);
      const planned = await activities(db, gen1).planFieldMigration(plan);
      expect(planned.kekId).toBe('1');
      expect(planned.kekChoice).toBe(
        "KEK 1: rekey's registry records none yet, public.tenant holds no DEK yet (5 row(s) without one), and public.tenant.kek_version defaults to 1",
      );
    }));

  it('DEKs on two generations: refused until the request names one, and nothing is recorded', () =>
    withMycelium(async (db) => {
      const [gen1, gen2] = [randomUUID(), randomUUID()];
      await seedMyceliumTenants(db.pool, 3, kekOf(gen1), 1);
      await seedMyceliumTenants(db.pool, 2, kekOf(gen2), 2);
      await expect(activities(db, gen2).planFieldMigration({ ...plan, dryRun: false })).rejects.toThrow(
        "target 'mycelium' has no current KEK recorded yet, and its DEKs are on 1 (3), 2 (2): name the generation the application's current key is (--kek-version N, kek_version in the admin API)",
      );
      expect(await registered(db)).toBe(0);
    }));

  it("the table's generation is proven: a worker whose current token_secret is another generation is refused, and seeds nothing", () =>
    withMycelium(async (db) => {
      const [gen1, gen2] = [randomUUID(), randomUUID()];
      await seedMyceliumTenants(db.pool, 4, kekOf(gen1), 1);
      await expect(activities(db, gen2).planFieldMigration({ ...plan, dryRun: false })).rejects.toThrow(
        "target 'mycelium': rekey's registry records none yet, and every DEK of public.tenant (4) is labelled 1, but none of 4 sampled DEKs opens under the current key of Mycelium token secrets (MYC_TOKEN_SECRET, MYC_OLD_TOKEN_SECRET): that key is not generation 1; name the generation it is (--kek-version N), or give the worker generation 1's key",
      );
      expect(await registered(db)).toBe(0);
    }));
});
