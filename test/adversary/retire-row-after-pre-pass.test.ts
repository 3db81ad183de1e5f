// Adversary of the retire proof split in two (a pre-pass outside the registry row's lock, then under the lock only what
// changed since): a row that needs the old KEK and reaches the table after the pre-pass read past it and before the lock
// is taken. The application (a gateway not yet restarted, a backup restored, a transaction that began before the proof
// and commits after it) does not take rekey's lock, so whatever "changed since" means, it must see each of these: a
// new row, a row deleted and inserted again under the same id (its version back to 1), a row restored with the version
// and timestamps it had before the rotation, a row whose transaction began before the pre-pass and committed after
// it, on each format: rekey's own (a label that names the new KEK over a value under the old one), Mycelium's (the
// column's DEFAULT 1, no version column), Talos's (a NULL key_id, a version column). The bad write happens inside the
// retire step's activity, just before rekey's own retire runs: after every pre-pass part, before the lock. Whatever the
// run answers, the old KEK must not end retired while the row opens under it alone. Against PostgreSQL and the
// time-skipping server; rows written with the fixtures' own crypto (test/helpers/*), never rekey's codecs.
import { createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import type { PoolClient } from 'pg';
import { Worker } from '@temporalio/worker';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { confirmStepUpdate, setGraceUpdate } from '../../src/workflows';
import { createApplicationDatabase, createTestDatabase, type TestDatabase } from '../helpers/database';
import { eventually } from '../helpers/eventually';
import { createTestKeys } from '../helpers/keys';
import { keyspaceIn } from '../helpers/keyspace';
import { createMyceliumSchema, kekOf, seedMyceliumTenants, unwrapDek, wrapDek } from '../helpers/mycelium';
import { wrapRekeyDek } from '../helpers/rekey-format';
import { createTalosSchema, decryptSecret, encryptSecret, seedSecrets } from '../helpers/talos';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

/**
 * What a case does to the table: `early` before the run starts (may open a transaction), `late` inside the retire step
 * while it waits for the old KEK's registry row.
 */
interface BadWrite {
  early?(db: TestDatabase): Promise<void>;
  late(db: TestDatabase): Promise<void>;
}

/** A transaction of the application's, begun in `early`, committed in `late`. */
class LongTransaction {
  private client: PoolClient | undefined;
  async begin(db: TestDatabase, write: (client: PoolClient) => Promise<void>): Promise<void> {
    this.client = await db.pool.connect();
    await this.client.query('BEGIN');
    await write(this.client);
  }
  async commit(): Promise<void> {
    await this.client!.query('COMMIT');
    this.client!.release();
    this.client = undefined;
  }
  release(): void {
    this.client?.release();
  }
}

describe('adversary: a row that needs the old KEK, written after the proof outside the lock and before the retirement under it', () => {
  const server = useTimeSkippingEnv();
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
  });

  /**
   * Runs a rotation `from` → `to` of `target` to its end on a worker whose retire step first runs `bad.late` (once),
   * confirming the retirement where the application owns it; returns the old KEK's registry state.
   */
  async function rotateWithBadWrite(options: {
    db: TestDatabase;
    target: string;
    from: string;
    to: string;
    activities: Activities;
    bad: BadWrite;
  }): Promise<string> {
    const { db, target, from, to, bad } = options;
    let written = false;
    const activities: Activities = {
      ...options.activities,
      retireKek: async (args) => {
        if (written) return options.activities.retireKek(args);
        written = true;
        // The test holds the old KEK's registry row: rekey's retire step runs whatever it runs before taking that lock
        // (a pre-pass), then waits for it; the bad row is written while it waits, and the row is let go after.
        const holder = await db.pool.connect();
        let settled = false;
        let committed = false;
        try {
          await holder.query('BEGIN');
          await holder.query('SELECT 1 FROM rekey.keks WHERE target = $1 AND kek_id = $2 FOR UPDATE', [target, from]);
          const running = options.activities.retireKek(args);
          void running.then(
            () => (settled = true),
            () => (settled = true),
          );
          await eventually(
            "rekey's retire step waiting for the old KEK's registry row",
            async () => {
              const { rows } = await db.pool.query<{ n: string }>(
                // A backend waiting for a lock the holder has: only the registry row it holds.
                `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()
                   AND $1 = ANY(pg_blocking_pids(pid))`,
                [(holder as unknown as { processID: number }).processID],
              );
              return Number(rows[0]!.n) > 0;
            },
            {
              within: 90_000,
              failIf: () => (settled ? 'the retire step ended without waiting for the lock' : undefined),
            },
          );
          await bad.late(db);
          await holder.query('COMMIT');
          committed = true;
          return await running;
        } finally {
          // A connection left inside its transaction is closed, not returned to the pool.
          holder.release(!committed);
        }
      },
    };
    const taskQueue = `retire-after-pre-pass-${randomUUID()}`;
    const worker = await Worker.create({
      connection: server.env.nativeConnection,
      taskQueue,
      workflowBundle: workflowBundle(),
      activities,
    });
    await bad.early?.(db);
    await worker.runUntil(async () => {
      const { handle } = await startRotation(
        server.env.client,
        { target, from, to, gracePeriod: '1d', restoreWindow: '30d', sliceTimeBudget: '1s', batchSize: 7 },
        { taskQueue, keyspace: await keyspaceIn(db.pool, target) },
      );
      await progressUntil(handle, (p) => p.phase === 'grace', { withinMs: 90_000 });
      await handle.executeUpdate(setGraceUpdate, { args: [{ endNow: true }] });
      if (target !== BUILTIN_TARGET) {
        await progressUntil(handle, (p) => p.waiting?.step === 'retire', { withinMs: 90_000 });
        await handle.executeUpdate(confirmStepUpdate, {
          args: [{ step: 'retire', note: 'the old key removed from every gateway' }],
        });
      }
      // The run's answer (completed, or refused at retire) is not the point: what it left in the registry is.
      await resultWithin(handle, 120_000).catch(() => undefined);
    });
    expect(written, 'the retire step ran').toBe(true);
    return (await new KekRegistry(db.pool, target).require(from)).state;
  }

  describe("Talos (key_id, version + 1 on every write, TALOS_KEK_<id>): 'v1' → 'v2'", () => {
    const keks = { v1: randomBytes(32), v2: randomBytes(32) };
    const env = {
      TALOS_KEK_v1: keks.v1.toString('base64url'),
      TALOS_KEK_v2: keks.v2.toString('base64url'),
      TALOS_CURRENT_KEK_ID: 'v2',
    };

    /** A Talos database (key_id nullable, as first contact accepts) with 30 secrets under v1. */
    async function talos() {
      const { db } = await createApplicationDatabase(async (pool) => {
        await createTalosSchema(pool);
        await pool.query('ALTER TABLE public.secrets ALTER COLUMN key_id DROP NOT NULL');
      });
      databases.push(db);
      const secrets = await seedSecrets(db.pool, keks.v1, 'v1', 30, 'v1');
      return { db, secrets, activities: createActivities({ db: db.pool, keys: createTestKeys(['x']).provider, env }) };
    }

    /** Inserts a secret under v1 labelled `keyId` through `client`; returns how to check it still opens under v1. */
    async function insertUnderV1(client: { query: PoolClient['query'] }, keyId: string | null) {
      const id = randomUUID();
      const name = `late-${id.slice(0, 8)}`;
      const value = randomBytes(48);
      const stored = encryptSecret(keks.v1, id, name, value, 'v1');
      await client.query(
        'INSERT INTO public.secrets (id, name, ciphertext, nonce, tag, aad, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [id, name, stored.ciphertext, stored.nonce, stored.tag, stored.aad, keyId],
      );
      return { id, name, value };
    }

    async function opensUnderV1(db: TestDatabase, id: string, name: string, value: Buffer): Promise<boolean> {
      const { rows } = await db.pool.query<{ ciphertext: string; nonce: string; tag: string; aad: string | null }>(
        'SELECT ciphertext, nonce, tag, aad FROM public.secrets WHERE id = $1',
        [id],
      );
      if (rows.length === 0) return false;
      try {
        return decryptSecret(keks.v1, id, name, rows[0]!).equals(value);
      } catch {
        return false;
      }
    }

    it("a secret a gateway not yet restarted creates under v1 (key_id 'v1') after the pre-pass keeps v1 from retiring", async () => {
      const { db, activities } = await talos();
      let late: { id: string; name: string; value: Buffer } | undefined;
      const state = await rotateWithBadWrite({
        db,
        target: 'talos',
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          late: async () => {
            late = await insertUnderV1(db.pool, 'v1');
          },
        },
      });
      expect(await opensUnderV1(db, late!.id, late!.name, late!.value)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it('a secret with a NULL key_id under v1 written after the pre-pass keeps v1 from retiring', async () => {
      const { db, activities } = await talos();
      let late: { id: string; name: string; value: Buffer } | undefined;
      const state = await rotateWithBadWrite({
        db,
        target: 'talos',
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          late: async () => {
            late = await insertUnderV1(db.pool, null);
          },
        },
      });
      expect(await opensUnderV1(db, late!.id, late!.name, late!.value)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it('a secret the pre-pass moved, deleted and inserted again under the same id under v1 (version back to 1), keeps v1 from retiring', async () => {
      const { db, secrets, activities } = await talos();
      const victim = secrets[3]!;
      const state = await rotateWithBadWrite({
        db,
        target: 'talos',
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          late: async () => {
            const stored = encryptSecret(keks.v1, victim.id, victim.name, victim.value, 'v1');
            await db.pool.query('DELETE FROM public.secrets WHERE id = $1', [victim.id]);
            await db.pool.query(
              `INSERT INTO public.secrets (id, name, ciphertext, nonce, tag, aad, key_id) VALUES ($1, $2, $3, $4, $5, $6, 'v1')`,
              [victim.id, victim.name, stored.ciphertext, stored.nonce, stored.tag, stored.aad],
            );
          },
        },
      });
      expect(await opensUnderV1(db, victim.id, victim.name, victim.value)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it('a secret restored from a backup taken before the rotation (its v1 value, key_id, version and timestamps as they were) after the pre-pass keeps v1 from retiring', async () => {
      const { db, secrets, activities } = await talos();
      const victim = secrets[5]!;
      const { rows: backup } = await db.pool.query<Record<string, unknown>>(
        'SELECT * FROM public.secrets WHERE id = $1',
        [victim.id],
      );
      const old = backup[0]!;
      const state = await rotateWithBadWrite({
        db,
        target: 'talos',
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          late: async () => {
            await db.pool.query(
              `UPDATE public.secrets SET ciphertext = $2, nonce = $3, tag = $4, aad = $5, key_id = $6, version = $7,
                 rotated_at = $8, updated_at = $9 WHERE id = $1`,
              [
                victim.id,
                old.ciphertext,
                old.nonce,
                old.tag,
                old.aad,
                old.key_id,
                old.version,
                old.rotated_at,
                old.updated_at,
              ],
            );
          },
        },
      });
      expect(await opensUnderV1(db, victim.id, victim.name, victim.value)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it("a secret under v1 (key_id 'v1') whose transaction began before the rotation and committed after the pre-pass keeps v1 from retiring", async () => {
      const { db, activities } = await talos();
      const transaction = new LongTransaction();
      let late: { id: string; name: string; value: Buffer } | undefined;
      try {
        const state = await rotateWithBadWrite({
          db,
          target: 'talos',
          from: 'v1',
          to: 'v2',
          activities,
          bad: {
            early: async () =>
              transaction.begin(db, async (client) => {
                late = await insertUnderV1(client, 'v1');
              }),
            late: async () => transaction.commit(),
          },
        });
        expect(await opensUnderV1(db, late!.id, late!.name, late!.value)).toBe(true);
        expect(state).toBe('decrypt_only');
      } finally {
        transaction.release();
      }
    });
    it("a secret under v1 written in a savepoint of a transaction that began before the rotation and committed after the pre-pass keeps v1 from retiring (the row's xmin is the savepoint's own transaction id, which no snapshot lists as running)", async () => {
      const { db, activities } = await talos();
      const transaction = new LongTransaction();
      let late: { id: string; name: string; value: Buffer } | undefined;
      try {
        const state = await rotateWithBadWrite({
          db,
          target: 'talos',
          from: 'v1',
          to: 'v2',
          activities,
          bad: {
            early: async () =>
              transaction.begin(db, async (client) => {
                // The transaction's own id first (an ORM's first statement), then the write inside a savepoint.
                await client.query('SELECT pg_current_xact_id()');
                await client.query('SAVEPOINT late_secret');
                late = await insertUnderV1(client, 'v1');
                await client.query('RELEASE SAVEPOINT late_secret');
              }),
            late: async () => transaction.commit(),
          },
        });
        expect(await opensUnderV1(db, late!.id, late!.name, late!.value)).toBe(true);
        expect(state).toBe('decrypt_only');
      } finally {
        transaction.release();
      }
    });
  });

  describe("Mycelium (kek_version NOT NULL DEFAULT 1, no version column, token_secret generations): '1' → '2'", () => {
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };

    async function mycelium() {
      const { db } = await createApplicationDatabase(createMyceliumSchema);
      databases.push(db);
      const tenants = await seedMyceliumTenants(db.pool, 30, kekOf(gen1), 1);
      const unprovisioned = await seedMyceliumTenants(db.pool, 3, null, 1);
      return {
        db,
        tenants,
        unprovisioned,
        activities: createActivities({ db: db.pool, keys: createTestKeys(['x']).provider, env }),
      };
    }

    async function opensUnderGen1(db: TestDatabase, id: string, dek: Buffer): Promise<boolean> {
      const { rows } = await db.pool.query<{ encrypted_dek: string | null }>(
        'SELECT encrypted_dek FROM public.tenant WHERE id = $1',
        [id],
      );
      const stored = rows[0]?.encrypted_dek;
      if (!stored) return false;
      try {
        return unwrapDek(kekOf(gen1), id, stored).equals(dek);
      } catch {
        return false;
      }
    }

    it('a DEK a gateway still on generation 1 provisions lazily after the pre-pass (kek_version left at its DEFAULT 1) keeps generation 1 from retiring', async () => {
      const { db, unprovisioned, activities } = await mycelium();
      const tenant = unprovisioned[0]!;
      const dek = randomBytes(32);
      const state = await rotateWithBadWrite({
        db,
        target: 'mycelium',
        from: '1',
        to: '2',
        activities,
        bad: {
          late: async () => {
            await db.pool.query('UPDATE public.tenant SET encrypted_dek = $2 WHERE id = $1', [
              tenant.id,
              wrapDek(kekOf(gen1), tenant.id, dek),
            ]);
          },
        },
      });
      expect(await opensUnderGen1(db, tenant.id, dek)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it('a tenant onboarded after the pre-pass by a gateway still on generation 1 (kek_version by its DEFAULT) keeps generation 1 from retiring', async () => {
      const { db, activities } = await mycelium();
      const id = randomUUID();
      const dek = randomBytes(32);
      const state = await rotateWithBadWrite({
        db,
        target: 'mycelium',
        from: '1',
        to: '2',
        activities,
        bad: {
          late: async () => {
            await db.pool.query('INSERT INTO public.tenant (id, name, encrypted_dek) VALUES ($1, $2, $3)', [
              id,
              `late ${id}`,
              wrapDek(kekOf(gen1), id, dek),
            ]);
          },
        },
      });
      expect(await opensUnderGen1(db, id, dek)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it('a tenant the pre-pass moved, restored from a backup taken before the rotation (its DEK under generation 1, kek_version 1), keeps generation 1 from retiring', async () => {
      const { db, tenants, activities } = await mycelium();
      const victim = tenants[4]!;
      const { rows } = await db.pool.query<{ encrypted_dek: string }>(
        'SELECT encrypted_dek FROM public.tenant WHERE id = $1',
        [victim.id],
      );
      const backup = rows[0]!.encrypted_dek;
      const state = await rotateWithBadWrite({
        db,
        target: 'mycelium',
        from: '1',
        to: '2',
        activities,
        bad: {
          late: async () => {
            await db.pool.query('UPDATE public.tenant SET encrypted_dek = $2, kek_version = 1 WHERE id = $1', [
              victim.id,
              backup,
            ]);
          },
        },
      });
      expect(await opensUnderGen1(db, victim.id, victim.dek!)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it('a tenant onboarded under generation 1 in a transaction that began before the rotation and committed after the pre-pass keeps generation 1 from retiring', async () => {
      const { db, activities } = await mycelium();
      const transaction = new LongTransaction();
      const id = randomUUID();
      const dek = randomBytes(32);
      try {
        const state = await rotateWithBadWrite({
          db,
          target: 'mycelium',
          from: '1',
          to: '2',
          activities,
          bad: {
            early: async () =>
              transaction.begin(db, async (client) => {
                await client.query('INSERT INTO public.tenant (id, name, encrypted_dek) VALUES ($1, $2, $3)', [
                  id,
                  `late ${id}`,
                  wrapDek(kekOf(gen1), id, dek),
                ]);
              }),
            late: async () => transaction.commit(),
          },
        });
        expect(await opensUnderGen1(db, id, dek)).toBe(true);
        expect(state).toBe('decrypt_only');
      } finally {
        transaction.release();
      }
    });
  });

  describe("rekey's own table (kek_id, version, updated_at, the trigger that lets only the active KEK wrap): 'v1' → 'v2'", () => {
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v1');
    const keks = { v1: Buffer.from(env.TEST_KEK_v1!, 'base64url') };
    afterAll(() => provider.close());

    /** rekey's table with 30 DEKs under v1 (the fixture's crypto), v1 active; the worker holds v1 and v2. */
    async function own() {
      const db = await createTestDatabase();
      databases.push(db);
      await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', kekFingerprint(keks.v1));
      const ids = Array.from({ length: 30 }, (_, i) => `tenant-${String(i).padStart(3, '0')}`);
      for (const id of ids) {
        await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v1', $2)`, [
          id,
          wrapRekeyDek(keks.v1, 'v1', id, randomBytes(32)),
        ]);
      }
      return { db, ids, activities: createActivities({ db: db.pool, keys: provider }) };
    }

    async function opensUnderV1(db: TestDatabase, id: string): Promise<boolean> {
      const { rows } = await db.pool.query<{ wrapped_dek: Buffer }>(
        'SELECT wrapped_dek FROM rekey.tenant_deks WHERE tenant_id = $1',
        [id],
      );
      const wrapped = rows[0]?.wrapped_dek;
      if (!wrapped) return false;
      return opensRekeyDek(keks.v1, 'v1', id, wrapped);
    }

    it("a DEK labelled 'v2' but sealed under v1, written after the pre-pass, keeps v1 from retiring", async () => {
      const { db, activities } = await own();
      const id = 'tenant-late';
      const state = await rotateWithBadWrite({
        db,
        target: BUILTIN_TARGET,
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          late: async () => {
            await db.pool.query(
              `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`,
              [id, wrapRekeyDek(keks.v1, 'v1', id, randomBytes(32))],
            );
          },
        },
      });
      expect(await opensUnderV1(db, id)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it("a DEK labelled 'v2' but sealed under v1, in a table written before the rotation and attached to rekey's table (ALTER TABLE … INHERIT) after the pre-pass, keeps v1 from retiring (its row's xmin is older than the change mark)", async () => {
      const { db, activities } = await own();
      const id = 'tenant-staged';
      const state = await rotateWithBadWrite({
        db,
        target: BUILTIN_TARGET,
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          early: async () => {
            // A table restored beside the live one (from a backup, a staging copy), written before the rotation began.
            await db.pool.query('CREATE TABLE rekey.tenant_deks_staged (LIKE rekey.tenant_deks INCLUDING ALL)');
            await db.pool.query(
              `INSERT INTO rekey.tenant_deks_staged (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`,
              [id, wrapRekeyDek(keks.v1, 'v1', id, randomBytes(32))],
            );
          },
          late: async () => {
            await db.pool.query('ALTER TABLE rekey.tenant_deks_staged INHERIT rekey.tenant_deks');
          },
        },
      });
      expect(await opensUnderV1(db, id)).toBe(true);
      expect(state).toBe('decrypt_only');
    });

    it("a DEK the pre-pass moved, restored from a backup taken before the rotation (its v1 bytes, version and updated_at, labelled 'v2'), keeps v1 from retiring", async () => {
      const { db, ids, activities } = await own();
      const id = ids[6]!;
      const { rows } = await db.pool.query<{ wrapped_dek: Buffer; version: string; updated_at: Date }>(
        'SELECT wrapped_dek, version, updated_at FROM rekey.tenant_deks WHERE tenant_id = $1',
        [id],
      );
      const backup = rows[0]!;
      const state = await rotateWithBadWrite({
        db,
        target: BUILTIN_TARGET,
        from: 'v1',
        to: 'v2',
        activities,
        bad: {
          late: async () => {
            await db.pool.query(
              `UPDATE rekey.tenant_deks SET wrapped_dek = $2, version = $3, updated_at = $4, kek_id = 'v2' WHERE tenant_id = $1`,
              [id, backup.wrapped_dek, backup.version, backup.updated_at],
            );
          },
        },
      });
      expect(await opensUnderV1(db, id)).toBe(true);
      expect(state).toBe('decrypt_only');
    });
  });
});

/** `wrapped` (0x01 ‖ nonce ‖ ciphertext ‖ tag, bound as test/helpers/rekey-format.ts binds it) opens under `kek`. */
function opensRekeyDek(kek: Buffer, kekId: string, tenantId: string, wrapped: Buffer): boolean {
  const prefixed = (text: string) => {
    const bytes = Buffer.from(text, 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length);
    return Buffer.concat([length, bytes]);
  };
  try {
    const decipher = createDecipheriv('aes-256-gcm', kek, wrapped.subarray(1, 13));
    decipher.setAAD(Buffer.concat([Buffer.from('rekey/dek/v1\0', 'utf8'), prefixed(tenantId), prefixed(kekId)]));
    decipher.setAuthTag(wrapped.subarray(wrapped.length - 16));
    decipher.update(wrapped.subarray(13, wrapped.length - 16));
    decipher.final();
    return true;
  } catch {
    return false;
  }
}
