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
import { randomBytes, randomUUID } from 'node:crypto';
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
import {
  createMyceliumSchema,
  kekOf,
  seedMyceliumTenants,
  unwrapDek,
  wrapDek,
  type SeededTenant,
} from '../helpers/mycelium';
import { unwrapRekeyDek, wrapRekeyDek } from '../helpers/rekey-format';
import { createTalosSchema, decryptSecret, encryptSecret, seedSecrets, type SeededSecret } from '../helpers/talos';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

/** What a format's fixture gives every case: the application's database and the worker's activities over it. */
interface Fixture {
  db: TestDatabase;
  activities: Activities;
}

/**
 * The change a case makes, planned before the run on a fresh fixture: `row` is the row that needs the old KEK once it
 * is made (checked to open under it after the run).
 */
interface Change<Row> {
  row: Row;
  /** Before the run starts (may open the application's transaction that `afterPrePass` commits). */
  beforeRun?(): Promise<void>;
  /** Inside the retire step, after every pre-pass part, while it waits for the old KEK's registry row. */
  afterPrePass(): Promise<void>;
  /** Let go of whatever the change holds, however the case ended. */
  release?(): void;
}

/** One row of a format's case table. */
interface Case<F extends Fixture, Row> {
  /** The test's title: the rule it proves. */
  rule: string;
  /** The change made after the pre-pass (and what it sets up before the run). */
  change: (fixture: F) => Change<Row> | Promise<Change<Row>>;
  /** The old KEK's registry state the run must leave, the row still opening under it alone. */
  oldKek: 'decrypt_only';
}

/** A format under attack: its rotation, its fixture, how a row is checked under the old KEK, and its case table. */
interface Format<F extends Fixture, Row> {
  title: string;
  target: string;
  from: string;
  to: string;
  fixture(): Promise<F>;
  opensUnderOldKek(fixture: F, row: Row): Promise<boolean>;
  cases: Case<F, Row>[];
}

/** A transaction of the application's, begun before the run, committed after the pre-pass. */
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

/** A change that writes with `write` in an application's transaction begun before the run and committed after the pre-pass. */
function inLongTransaction<Row>(db: TestDatabase, row: Row, write: (client: PoolClient) => Promise<void>): Change<Row> {
  const transaction = new LongTransaction();
  return {
    row,
    beforeRun: () => transaction.begin(db, write),
    afterPrePass: () => transaction.commit(),
    release: () => transaction.release(),
  };
}

// Talos (key_id, version + 1 on every write, TALOS_KEK_<id>): 'v1' → 'v2'.
const talosKeks = { v1: randomBytes(32), v2: randomBytes(32) };
const talosEnv = {
  TALOS_KEK_v1: talosKeks.v1.toString('base64url'),
  TALOS_KEK_v2: talosKeks.v2.toString('base64url'),
  TALOS_CURRENT_KEK_ID: 'v2',
};
type TalosRow = Pick<SeededSecret, 'id' | 'name' | 'value'>;

/** A secret not yet in the table. */
function newSecret(): TalosRow {
  const id = randomUUID();
  return { id, name: `late-${id.slice(0, 8)}`, value: randomBytes(48) };
}

/** Inserts `secret` sealed under v1 and labelled `keyId` through `client`. */
async function insertUnderV1(client: { query: PoolClient['query'] }, secret: TalosRow, keyId: string | null) {
  const stored = encryptSecret(talosKeks.v1, secret.id, secret.name, secret.value, 'v1');
  await client.query(
    'INSERT INTO public.secrets (id, name, ciphertext, nonce, tag, aad, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7)',
    [secret.id, secret.name, stored.ciphertext, stored.nonce, stored.tag, stored.aad, keyId],
  );
}

const talos: Format<Fixture & { secrets: SeededSecret[] }, TalosRow> = {
  title: "Talos (key_id, version + 1 on every write, TALOS_KEK_<id>): 'v1' → 'v2'",
  target: 'talos',
  from: 'v1',
  to: 'v2',
  /** A Talos database (key_id nullable, as first contact accepts) with 30 secrets under v1. */
  async fixture() {
    const { db } = await createApplicationDatabase(async (pool) => {
      await createTalosSchema(pool);
      await pool.query('ALTER TABLE public.secrets ALTER COLUMN key_id DROP NOT NULL');
    });
    const secrets = await seedSecrets(db.pool, talosKeks.v1, 'v1', 30, 'v1');
    const activities = createActivities({ db: db.pool, keys: createTestKeys(['x']).provider, env: talosEnv });
    return { db, secrets, activities };
  },
  async opensUnderOldKek({ db }, { id, name, value }) {
    const { rows } = await db.pool.query<{ ciphertext: string; nonce: string; tag: string; aad: string | null }>(
      'SELECT ciphertext, nonce, tag, aad FROM public.secrets WHERE id = $1',
      [id],
    );
    if (rows.length === 0) return false;
    try {
      return decryptSecret(talosKeks.v1, id, name, rows[0]!).equals(value);
    } catch {
      return false;
    }
  },
  cases: [
    {
      rule: "a secret a gateway not yet restarted creates under v1 (key_id 'v1') after the pre-pass keeps v1 from retiring",
      change: ({ db }) => {
        const row = newSecret();
        return { row, afterPrePass: () => insertUnderV1(db.pool, row, 'v1') };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: 'a secret with a NULL key_id under v1 written after the pre-pass keeps v1 from retiring',
      change: ({ db }) => {
        const row = newSecret();
        return { row, afterPrePass: () => insertUnderV1(db.pool, row, null) };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: 'a secret the pre-pass moved, deleted and inserted again under the same id under v1 (version back to 1), keeps v1 from retiring',
      change: ({ db, secrets }) => {
        const row = secrets[3]!;
        return {
          row,
          afterPrePass: async () => {
            await db.pool.query('DELETE FROM public.secrets WHERE id = $1', [row.id]);
            await insertUnderV1(db.pool, row, 'v1');
          },
        };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: 'a secret restored from a backup taken before the rotation (its v1 value, key_id, version and timestamps as they were) after the pre-pass keeps v1 from retiring',
      change: async ({ db, secrets }) => {
        const row = secrets[5]!;
        const { rows } = await db.pool.query<Record<string, unknown>>('SELECT * FROM public.secrets WHERE id = $1', [
          row.id,
        ]);
        const old = rows[0]!;
        return {
          row,
          afterPrePass: async () => {
            await db.pool.query(
              `UPDATE public.secrets SET ciphertext = $2, nonce = $3, tag = $4, aad = $5, key_id = $6, version = $7,
                 rotated_at = $8, updated_at = $9 WHERE id = $1`,
              [
                row.id,
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
        };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: "a secret under v1 (key_id 'v1') whose transaction began before the rotation and committed after the pre-pass keeps v1 from retiring",
      change: ({ db }) => {
        const row = newSecret();
        return inLongTransaction(db, row, (client) => insertUnderV1(client, row, 'v1'));
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: "a secret under v1 written in a savepoint of a transaction that began before the rotation and committed after the pre-pass keeps v1 from retiring (the row's xmin is the savepoint's own transaction id, which no snapshot lists as running)",
      change: ({ db }) => {
        const row = newSecret();
        return inLongTransaction(db, row, async (client) => {
          // The transaction's own id first (an ORM's first statement), then the write inside a savepoint.
          await client.query('SELECT pg_current_xact_id()');
          await client.query('SAVEPOINT late_secret');
          await insertUnderV1(client, row, 'v1');
          await client.query('RELEASE SAVEPOINT late_secret');
        });
      },
      oldKek: 'decrypt_only',
    },
  ],
};

// Mycelium (kek_version NOT NULL DEFAULT 1, no version column, token_secret generations): '1' → '2'.
const [gen1, gen2] = [randomUUID(), randomUUID()];
type MyceliumRow = { id: string; dek: Buffer };

/** Onboards tenant `row.id` with its DEK under generation 1, kek_version by its DEFAULT, through `client`. */
async function onboardUnderGen1(client: { query: PoolClient['query'] }, row: MyceliumRow): Promise<void> {
  await client.query('INSERT INTO public.tenant (id, name, encrypted_dek) VALUES ($1, $2, $3)', [
    row.id,
    `late ${row.id}`,
    wrapDek(kekOf(gen1), row.id, row.dek),
  ]);
}

const mycelium: Format<Fixture & { tenants: SeededTenant[]; unprovisioned: SeededTenant[] }, MyceliumRow> = {
  title: "Mycelium (kek_version NOT NULL DEFAULT 1, no version column, token_secret generations): '1' → '2'",
  target: 'mycelium',
  from: '1',
  to: '2',
  /** A Mycelium database with 30 tenants under generation 1 and 3 not provisioned yet. */
  async fixture() {
    const { db } = await createApplicationDatabase(createMyceliumSchema);
    const tenants = await seedMyceliumTenants(db.pool, 30, kekOf(gen1), 1);
    const unprovisioned = await seedMyceliumTenants(db.pool, 3, null, 1);
    const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };
    const activities = createActivities({ db: db.pool, keys: createTestKeys(['x']).provider, env });
    return { db, tenants, unprovisioned, activities };
  },
  async opensUnderOldKek({ db }, { id, dek }) {
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
  },
  cases: [
    {
      rule: 'a DEK a gateway still on generation 1 provisions lazily after the pre-pass (kek_version left at its DEFAULT 1) keeps generation 1 from retiring',
      change: ({ db, unprovisioned }) => {
        const row = { id: unprovisioned[0]!.id, dek: randomBytes(32) };
        return {
          row,
          afterPrePass: async () => {
            await db.pool.query('UPDATE public.tenant SET encrypted_dek = $2 WHERE id = $1', [
              row.id,
              wrapDek(kekOf(gen1), row.id, row.dek),
            ]);
          },
        };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: 'a tenant onboarded after the pre-pass by a gateway still on generation 1 (kek_version by its DEFAULT) keeps generation 1 from retiring',
      change: ({ db }) => {
        const row = { id: randomUUID(), dek: randomBytes(32) };
        return { row, afterPrePass: () => onboardUnderGen1(db.pool, row) };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: 'a tenant the pre-pass moved, restored from a backup taken before the rotation (its DEK under generation 1, kek_version 1), keeps generation 1 from retiring',
      change: async ({ db, tenants }) => {
        const row = { id: tenants[4]!.id, dek: tenants[4]!.dek! };
        const { rows } = await db.pool.query<{ encrypted_dek: string }>(
          'SELECT encrypted_dek FROM public.tenant WHERE id = $1',
          [row.id],
        );
        const backup = rows[0]!.encrypted_dek;
        return {
          row,
          afterPrePass: async () => {
            await db.pool.query('UPDATE public.tenant SET encrypted_dek = $2, kek_version = 1 WHERE id = $1', [
              row.id,
              backup,
            ]);
          },
        };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: 'a tenant onboarded under generation 1 in a transaction that began before the rotation and committed after the pre-pass keeps generation 1 from retiring',
      change: ({ db }) => {
        const row = { id: randomUUID(), dek: randomBytes(32) };
        return inLongTransaction(db, row, (client) => onboardUnderGen1(client, row));
      },
      oldKek: 'decrypt_only',
    },
  ],
};

// rekey's own table (kek_id, version, updated_at, the trigger that lets only the active KEK wrap): 'v1' → 'v2'.
const ownKeys = createTestKeys(['v1', 'v2'], 'v1');
const ownV1 = Buffer.from(ownKeys.env.TEST_KEK_v1!, 'base64url');
type OwnRow = { id: string; dek: Buffer };

const own: Format<Fixture & { ids: string[] }, OwnRow> = {
  title: "rekey's own table (kek_id, version, updated_at, the trigger that lets only the active KEK wrap): 'v1' → 'v2'",
  target: BUILTIN_TARGET,
  from: 'v1',
  to: 'v2',
  /** rekey's table with 30 DEKs under v1 (the fixture's crypto), v1 active; the worker holds v1 and v2. */
  async fixture() {
    const db = await createTestDatabase();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', kekFingerprint(ownV1));
    const ids = Array.from({ length: 30 }, (_, i) => `tenant-${String(i).padStart(3, '0')}`);
    for (const id of ids) {
      await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v1', $2)`, [
        id,
        wrapRekeyDek(ownV1, 'v1', id, randomBytes(32)),
      ]);
    }
    return { db, ids, activities: createActivities({ db: db.pool, keys: ownKeys.provider }) };
  },
  async opensUnderOldKek({ db }, { id, dek }) {
    const { rows } = await db.pool.query<{ wrapped_dek: Buffer }>(
      'SELECT wrapped_dek FROM rekey.tenant_deks WHERE tenant_id = $1',
      [id],
    );
    const wrapped = rows[0]?.wrapped_dek;
    if (!wrapped) return false;
    try {
      return unwrapRekeyDek(ownV1, 'v1', id, wrapped).equals(dek);
    } catch {
      return false;
    }
  },
  cases: [
    {
      rule: "a DEK labelled 'v2' but sealed under v1, written after the pre-pass, keeps v1 from retiring",
      change: ({ db }) => {
        const row = { id: 'tenant-late', dek: randomBytes(32) };
        return {
          row,
          afterPrePass: async () => {
            await db.pool.query(
              `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`,
              [row.id, wrapRekeyDek(ownV1, 'v1', row.id, row.dek)],
            );
          },
        };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: "a DEK labelled 'v2' but sealed under v1, in a table written before the rotation and attached to rekey's table (ALTER TABLE … INHERIT) after the pre-pass, keeps v1 from retiring (its row's xmin is older than the change mark)",
      change: ({ db }) => {
        const row = { id: 'tenant-staged', dek: randomBytes(32) };
        return {
          row,
          beforeRun: async () => {
            // A table restored beside the live one (from a backup, a staging copy), written before the rotation began.
            await db.pool.query('CREATE TABLE rekey.tenant_deks_staged (LIKE rekey.tenant_deks INCLUDING ALL)');
            await db.pool.query(
              `INSERT INTO rekey.tenant_deks_staged (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`,
              [row.id, wrapRekeyDek(ownV1, 'v1', row.id, row.dek)],
            );
          },
          afterPrePass: async () => {
            await db.pool.query('ALTER TABLE rekey.tenant_deks_staged INHERIT rekey.tenant_deks');
          },
        };
      },
      oldKek: 'decrypt_only',
    },
    {
      rule: "a DEK the pre-pass moved, restored from a backup taken before the rotation (its v1 bytes, version and updated_at, labelled 'v2'), keeps v1 from retiring",
      change: async ({ db, ids }) => {
        const id = ids[6]!;
        const { rows } = await db.pool.query<{ wrapped_dek: Buffer; version: string; updated_at: Date }>(
          'SELECT wrapped_dek, version, updated_at FROM rekey.tenant_deks WHERE tenant_id = $1',
          [id],
        );
        const backup = rows[0]!;
        return {
          row: { id, dek: unwrapRekeyDek(ownV1, 'v1', id, backup.wrapped_dek) },
          afterPrePass: async () => {
            await db.pool.query(
              `UPDATE rekey.tenant_deks SET wrapped_dek = $2, version = $3, updated_at = $4, kek_id = 'v2' WHERE tenant_id = $1`,
              [id, backup.wrapped_dek, backup.version, backup.updated_at],
            );
          },
        };
      },
      oldKek: 'decrypt_only',
    },
  ],
};

describe('adversary: a row that needs the old KEK, written after the proof outside the lock and before the retirement under it', () => {
  const server = useTimeSkippingEnv();
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
    ownKeys.provider.close();
  });

  /**
   * Runs a rotation of `format` to its end on a worker whose retire step first makes `change.afterPrePass` (once),
   * confirming the retirement where the application owns it; returns the old KEK's registry state.
   */
  async function rotateWithChange<F extends Fixture, Row>(
    format: Format<F, Row>,
    fixture: F,
    change: Change<Row>,
  ): Promise<string> {
    const { target, from, to } = format;
    const { db } = fixture;
    let written = false;
    const activities: Activities = {
      ...fixture.activities,
      retireKek: async (args) => {
        if (written) return fixture.activities.retireKek(args);
        written = true;
        // The test holds the old KEK's registry row: rekey's retire step runs whatever it runs before taking that lock
        // (a pre-pass), then waits for it; the change is made while it waits, and the row is let go after.
        const holder = await db.pool.connect();
        let settled = false;
        let committed = false;
        try {
          await holder.query('BEGIN');
          await holder.query('SELECT 1 FROM rekey.keks WHERE target = $1 AND kek_id = $2 FOR UPDATE', [target, from]);
          const running = fixture.activities.retireKek(args);
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
          await change.afterPrePass();
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
    await change.beforeRun?.();
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

  function describeFormat<F extends Fixture, Row>(format: Format<F, Row>): void {
    describe(format.title, () => {
      for (const { rule, change, oldKek } of format.cases) {
        it(rule, async () => {
          const fixture = await format.fixture();
          databases.push(fixture.db);
          const made = await change(fixture);
          try {
            const state = await rotateWithChange(format, fixture, made);
            expect(await format.opensUnderOldKek(fixture, made.row)).toBe(true);
            expect(state).toBe(oldKek);
          } finally {
            made.release?.();
          }
        });
      }
    });
  }

  describeFormat(talos);
  describeFormat(mycelium);
  describeFormat(own);
});
