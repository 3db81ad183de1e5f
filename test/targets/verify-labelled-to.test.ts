// Verify before grace and retire checks every row labelled with the new KEK under it (issue 26's mission, issue 24's
// theme: nothing irreversible without proof). A row whose label says `to` but whose value is still sealed under `from`
// (an application's bug, a crash between its own writes, a backup restored) is neither moved by the passes (rows
// labelled `from` or neither KEK) nor tried by the retire proof (rows labelled `from`); verify sampled 200 rows
// labelled `to`, so one such row among thousands went through, and retiring `from` (then destroying it) lost it.
// Each format's bad row is written by fixture code with its own crypto, beside 10,000 good rows labelled `to`.
import { randomBytes, randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { Pool } from 'pg';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { seedTenants } from '../../src/dev/tenants';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { createApplicationDatabase, createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys, testKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, kekOf, seedMyceliumTenants, unwrapDek as myceliumUnwrap } from '../helpers/mycelium';
import { createTalosSchema, decryptSecret, seedSecrets, type StoredSecret } from '../helpers/talos';
import { wrapRekeyDek } from '../helpers/rekey-format';
import { resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';
import { fingerprintIn } from '../helpers/store-keys';

/** Good rows labelled `to`: far more than verify's sample of 200, so that a sample all but never meets the bad row. */
const GOOD_ON_TO = 10_000;
/** Rows on `from` the rotation moves. */
const ON_FROM = 20;

/** Small parts, so that the check runs in several (each counted once). */
const PARTS: Partial<RotationRequest> = { batchSize: 500, sliceTimeBudget: '100ms', gracePeriod: '1d' };

describe("verify fails a rotation, before grace and retire, on a row labelled 'to' whose value is still sealed under 'from'", () => {
  const server = useTimeSkippingEnv();

  /** Runs the rotation on a fresh worker; its failure. */
  async function failureOf(
    db: TestDatabase,
    activities: object,
    target: string,
    request: RotationRequest,
  ): Promise<string> {
    const taskQueue = `verify-labelled-${randomUUID()}`;
    const worker = await Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities,
    });
    const failure = await worker.runUntil(async () => {
      const { handle } = await startRotation(
        server.env.client,
        { ...PARTS, ...request, target },
        { taskQueue, keyspace: await keyspaceIn(db.pool, target) },
      );
      return resultWithin(handle, 120_000).then(
        (report) => new Error(`the rotation ended ${JSON.stringify(report)}`),
        (err: unknown) => err,
      );
    });
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    return (failure as WorkflowFailedError).cause?.message ?? '';
  }

  function expectTheRefusal(message: string, from: string, to: string, badId: string): void {
    expect(message).toContain(
      `verify: 1 of the ${GOOD_ON_TO + ON_FROM + 1} row(s) labelled '${to}' do not open under '${to}'; 1 of them are sealed under '${from}'`,
    );
    expect(message).toContain(`'${from}' is not retired`);
    expect(message).toContain(`${badId} (labelled '${to}', its value is under '${from}')`);
  }

  async function stateOf(pool: Pool, target: string, kekId: string): Promise<string | undefined> {
    return (await new KekRegistry(pool, target).get(kekId))?.state;
  }

  it("rekey's own table (the format DevSkyy's DEKs are kept in): the row is named, 'v1' stays decrypt-only, and the row still opens under 'v1'", async () => {
    const db = await createTestDatabase();
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v1');
    try {
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(provider, 'v1'));
      // The rotation moves every row to v2; rekey's table refuses a label its registry does not know, so the
      // application's bad write comes once v2 is active: just before verify, sealed under v1 (its AAD binds v1) and
      // labelled v2.
      await seedTenants({ db: db.pool, keys: provider, kekId: 'v1', count: GOOD_ON_TO + ON_FROM });
      const v1 = Buffer.from(env.TEST_KEK_v1!, 'base64url');
      const bad = wrapRekeyDek(v1, 'v1', 'c-bad', randomBytes(32));
      const real = createActivities({ db: db.pool, keys: provider });
      const activities = {
        ...real,
        async verifyRotation(args: Parameters<typeof real.verifyRotation>[0]) {
          await db.pool.query(
            `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ('c-bad', 'v2', $1) ON CONFLICT DO NOTHING`,
            [bad],
          );
          return real.verifyRotation(args);
        },
      };
      const message = await failureOf(db, activities, BUILTIN_TARGET, { from: 'v1', to: 'v2' });
      expectTheRefusal(message, 'v1', 'v2', 'c-bad');
      expect(await stateOf(db.pool, BUILTIN_TARGET, 'v1')).toBe('decrypt_only');
      const { rows } = await db.pool.query<{ kek_id: string; wrapped_dek: Buffer }>(
        `SELECT kek_id, wrapped_dek FROM rekey.tenant_deks WHERE tenant_id = 'c-bad'`,
      );
      expect(rows[0]).toEqual({ kek_id: 'v2', wrapped_dek: bad });
    } finally {
      provider.close();
      await db.drop();
    }
  });

  it("Mycelium's tenant table: a DEK under generation 1 labelled 2 is named, generation 1 stays decrypt-only", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    const keys = testKeys(['v1']);
    try {
      await seedMyceliumTenants(db.pool, ON_FROM, kekOf(gen1), 1);
      await seedMyceliumTenants(db.pool, GOOD_ON_TO, kekOf(gen2), 2);
      const [bad] = await seedMyceliumTenants(db.pool, 1, kekOf(gen1), 2);
      const activities = createActivities({
        db: db.pool,
        keys,
        env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
      });
      const message = await failureOf(db, activities, 'mycelium', { from: '1', to: '2' });
      expectTheRefusal(message, '1', '2', bad!.id);
      expect(await stateOf(db.pool, 'mycelium', '1')).toBe('decrypt_only');
      const { rows } = await db.pool.query<{ encrypted_dek: string; kek_version: number }>(
        'SELECT encrypted_dek, kek_version FROM public.tenant WHERE id = $1',
        [bad!.id],
      );
      expect(rows[0]!.kek_version).toBe(2);
      expect(myceliumUnwrap(kekOf(gen1), bad!.id, rows[0]!.encrypted_dek).equals(bad!.dek!)).toBe(true);
    } finally {
      keys.close();
      await db.drop();
    }
  });

  it("Talos's secrets table: a secret sealed under v1 whose key_id says v2 is named, v1 stays decrypt-only", async () => {
    const { db } = await createApplicationDatabase(createTalosSchema);
    const keks = { v1: randomBytes(32), v2: randomBytes(32) };
    const keys = testKeys(['v1']);
    try {
      await seedSecrets(db.pool, keks.v1, 'v1', ON_FROM, 'v1');
      await seedSecrets(db.pool, keks.v2, 'v2', GOOD_ON_TO, 'v1');
      const [bad] = await seedSecrets(db.pool, keks.v1, 'v1', 1, 'v1');
      await db.pool.query(`UPDATE public.secrets SET key_id = 'v2' WHERE id = $1`, [bad!.id]);
      const activities = createActivities({
        db: db.pool,
        keys,
        env: {
          TALOS_KEK_v1: keks.v1.toString('base64url'),
          TALOS_KEK_v2: keks.v2.toString('base64url'),
          TALOS_CURRENT_KEK_ID: 'v2',
        },
      });
      const message = await failureOf(db, activities, 'talos', { from: 'v1', to: 'v2' });
      expectTheRefusal(message, 'v1', 'v2', bad!.id);
      expect(await stateOf(db.pool, 'talos', 'v1')).toBe('decrypt_only');
      const { rows } = await db.pool.query<StoredSecret & { key_id: string }>(
        'SELECT ciphertext, nonce, tag, aad, key_id FROM public.secrets WHERE id = $1',
        [bad!.id],
      );
      expect(rows[0]!.key_id).toBe('v2');
      expect(decryptSecret(keks.v1, bad!.id, bad!.name, rows[0]!).equals(bad!.value)).toBe(true);
    } finally {
      keys.close();
      await db.drop();
    }
  });
});
