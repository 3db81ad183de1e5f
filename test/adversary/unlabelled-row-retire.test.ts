// Adversary of the retire and destroy proofs on a row with a value and no label. Every scan rekey makes selects rows by
// their label: the passes and the retire and destroy proofs read the rows labelled `from`, verify's scan of "the rows
// labelled with neither KEK" requires a label (`label IS NOT NULL AND label <> from AND label <> to`), and the new
// check reads the rows labelled `to`. A row whose label column is NULL but whose value is sealed (an application that
// writes the value and the label in two statements and crashed between them; Talos's `key_id` column, which
// ../shared/seed-systems.md does not declare NOT NULL, and first contact accepts a nullable label column) is seen by
// none of them: its KEK retires, and its destruction tells the operator to remove the only key that opens it.
// Against PostgreSQL, the secret written with the fixture's own crypto (test/helpers/talos.ts).
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { createTalosSchema, decryptSecret, encryptSecret, seedSecrets } from '../helpers/talos';

describe('adversary: a Talos secret with a value and no key_id (NULL), sealed under the KEK being retired', () => {
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
  });
  const [v1, v2] = [randomBytes(32), randomBytes(32)];
  const env = {
    TALOS_KEK_v1: v1.toString('base64url'),
    TALOS_KEK_v2: v2.toString('base64url'),
    TALOS_CURRENT_KEK_ID: 'v2',
  };

  /** A rotation v1 → v2 that moved every labelled secret, and one secret under v1 whose key_id was never written. */
  async function rotatedWithAnUnlabelledSecret() {
    const { db } = await createApplicationDatabase(async (pool) => {
      await createTalosSchema(pool);
      await pool.query('ALTER TABLE public.secrets ALTER COLUMN key_id DROP NOT NULL');
    });
    databases.push(db);
    const registry = new KekRegistry(db.pool, 'talos');
    await registry.seedActive('v1', kekFingerprint(v1));
    await registry.register('v2', kekFingerprint(v2));
    await registry.promote('v1', 'v2');
    await seedSecrets(db.pool, v2, 'v2', 10, 'v1');
    const id = randomUUID();
    const name = `unlabelled-${id.slice(0, 8)}`;
    const value = randomBytes(40);
    const stored = encryptSecret(v1, id, name, value, 'v1');
    await db.pool.query(
      'INSERT INTO public.secrets (id, name, ciphertext, nonce, tag, aad, key_id) VALUES ($1, $2, $3, $4, $5, $6, NULL)',
      [id, name, stored.ciphertext, stored.nonce, stored.tag, stored.aad],
    );
    expect(decryptSecret(v1, id, name, stored).equals(value)).toBe(true);
    return { db, registry, id, activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env }) };
  }

  it('retire of v1 is refused while a secret with no label opens under v1 alone', async () => {
    const { registry, activities } = await rotatedWithAnUnlabelledSecret();
    await expect(activities.retireKek({ target: 'talos', from: 'v1', restoreWindowMs: 86_400_000 })).rejects.toThrow();
    expect((await registry.require('v1')).state).toBe('decrypt_only');
  });

  it('destroy of v1 at the end of its window is refused while a secret with no label opens under v1 alone: the operator is not told to remove TALOS_KEK_v1', async () => {
    const { db, registry, id, activities } = await rotatedWithAnUnlabelledSecret();
    await inTransaction(db.pool, (client) => registry.retire('v1', 0, client));
    const report = await activities.destroyKek({ target: 'talos', kekId: 'v1' });
    expect(report.outcome, report.detail).toBe('refused');
    expect(report.neededRows?.map((r) => r.tenantId)).toContain(id);
    expect((await registry.require('v1')).state).toBe('retired');
  });
});
