import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { createTestDatabase, migrateDatabase, type TestDatabase } from '../helpers/database';
import { createTalosSchema } from '../helpers/talos';
import { testKeys } from '../helpers/keys';
import { createMyceliumSchema, kekOf, myceliumShape, seedMyceliumTenants } from '../helpers/mycelium';
import { TargetSchemaError } from '../../src/errors';

const [gen1, gen2] = [randomUUID(), randomUUID()];
const env = { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 };
const request = { target: 'mycelium', from: '1', to: '2', dryRun: true };
const talosEnv = {
  TALOS_KEK_v1: Buffer.alloc(32, 1).toString('base64url'),
  TALOS_KEK_v2: Buffer.alloc(32, 2).toString('base64url'),
};

async function withDatabase(prepare: (db: TestDatabase) => Promise<void>, check: (db: TestDatabase) => Promise<void>) {
  const db = await createTestDatabase({ migrate: false });
  try {
    await prepare(db);
    await migrateDatabase(db.pool);
    await check(db);
  } finally {
    await db.drop();
  }
}

/** What first contact answers, and proof that it wrote nothing: the table as it was, no KEK registered. */
async function refusal(db: TestDatabase): Promise<string> {
  const before = await myceliumShape(db.pool);
  const rows = await db.pool.query('SELECT * FROM public.tenant').catch(() => undefined);
  const error = await createActivities({ db: db.pool, keys: testKeys(['v1']), env })
    .validateRotation(request)
    .then(
      () => undefined,
      (err: unknown) => err,
    );
  expect(error).toBeInstanceOf(TargetSchemaError);
  expect(await myceliumShape(db.pool)).toEqual(before);
  if (rows) expect((await db.pool.query('SELECT * FROM public.tenant')).rows).toEqual(rows.rows);
  expect((await db.pool.query(`SELECT 1 FROM rekey.keks WHERE target = 'mycelium'`)).rowCount).toBe(0);
  return (error as Error).message;
}

describe("first contact with an application's table: checked before anything is written", () => {
  it('an unknown table is refused, naming it and the database, with the DDL of every table the preset needs', () =>
    withDatabase(
      () => Promise.resolve(),
      async (db) => {
        expect(await refusal(db)).toMatch(
          new RegExp(
            `^target 'mycelium': table public\\.tenant does not exist in database rekey_test_[0-9a-f]+ \\(check the target's table, or the database it points at\\); ` +
              `public\\.user does not exist \\(field totp_secret\\); public\\.webhook does not exist \\(field http_secret\\)\\. ` +
              `The DDL it expects for what is missing: CREATE TABLE public\\.tenant \\(id uuid PRIMARY KEY, kek_version integer NOT NULL DEFAULT 1, encrypted_dek text, meta jsonb NOT NULL DEFAULT '\\{\\}'::jsonb\\); ` +
              `CREATE TABLE public\\."user" \\(id uuid PRIMARY KEY, mfa jsonb\\); CREATE TABLE public\\.webhook \\(id uuid PRIMARY KEY, secret jsonb\\);$`,
          ),
        );
      },
    ));

  it("Finding: first contact names every missing table and column at once (the target's, and its fields' tables user, webhook and tenant.meta), with the DDL the preset expects, where it named them one at a time", () =>
    withDatabase(
      async (db) => {
        await db.pool.query('CREATE TABLE public.tenant (id uuid PRIMARY KEY, encrypted_dek text)');
        await db.pool.query('CREATE TABLE public.webhook (id uuid PRIMARY KEY, url text)');
      },
      async (db) => {
        expect(await refusal(db)).toBe(
          "target 'mycelium': public.tenant has no column kek_version (KEK generation); public.tenant has no column meta (encrypted value, field telegram_bot_token, field telegram_webhook_secret); " +
            'public.user does not exist (field totp_secret); public.webhook has no column secret (encrypted value, field http_secret). ' +
            "The DDL it expects for what is missing: ALTER TABLE public.tenant ADD COLUMN kek_version integer NOT NULL DEFAULT 1; ALTER TABLE public.tenant ADD COLUMN meta jsonb NOT NULL DEFAULT '{}'::jsonb; " +
            'CREATE TABLE public."user" (id uuid PRIMARY KEY, mfa jsonb); ALTER TABLE public.webhook ADD COLUMN secret jsonb;',
        );
      },
    ));

  it('a column of an unusable type is refused, saying which type it must be', () =>
    withDatabase(
      async (db) => {
        await createMyceliumSchema(db.pool);
        await db.pool.query('ALTER TABLE public.tenant ALTER COLUMN kek_version TYPE text');
      },
      async (db) => {
        expect(await refusal(db)).toBe(
          "target 'mycelium': public.tenant.kek_version (KEK generation) is text; it must be an integer",
        );
      },
    ));

  it("Finding: first contact checks the promote probe's timestamp column (Talos's updated_at), which the probe used to retry for minutes", async () => {
    const db = await createTestDatabase({ migrate: false });
    try {
      await createTalosSchema(db.pool);
      await db.pool.query('ALTER TABLE public.secrets DROP COLUMN updated_at');
      await migrateDatabase(db.pool);
      const error = await createActivities({ db: db.pool, keys: testKeys(['v1']), env: talosEnv })
        .validateRotation({ target: 'talos', from: 'v1', to: 'v2' })
        .then(
          () => undefined,
          (err: unknown) => err,
        );
      expect(error).toBeInstanceOf(TargetSchemaError);
      expect((error as Error).message).toBe(
        "target 'talos': public.secrets has no column updated_at (the promote probe's time of the application's writes). " +
          'The DDL it expects for what is missing: ALTER TABLE public.secrets ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();',
      );
      expect((await db.pool.query(`SELECT 1 FROM rekey.keks WHERE target = 'talos'`)).rowCount).toBe(0);
    } finally {
      await db.drop();
    }
  });

  it('a format that reads none of the sampled rows is refused with the first reason', () =>
    withDatabase(
      async (db) => {
        await createMyceliumSchema(db.pool);
        await seedMyceliumTenants(db.pool, 30, kekOf(gen1), 1);
        // The DEKs without their 'v2:' prefix: not what Mycelium (or the preset) reads.
        await db.pool.query(`UPDATE public.tenant SET encrypted_dek = substr(encrypted_dek, 4)`);
      },
      async (db) => {
        expect(await refusal(db)).toBe(
          "target 'mycelium': the format reads none of 30 sampled rows of public.tenant (first: encrypted_dek does not start with 'v2:'); check the target's format: nothing was written",
        );
      },
    ));

  it("a dry run's census says per KEK how many rows there are, how many the format reads and the KEK opens", () =>
    withDatabase(
      async (db) => {
        await createMyceliumSchema(db.pool);
        await seedMyceliumTenants(db.pool, 12, kekOf(gen1), 1);
        await seedMyceliumTenants(db.pool, 3, kekOf(gen2), 1); // labelled 1, under generation 2
        await seedMyceliumTenants(db.pool, 5, kekOf(gen2), 2);
        await seedMyceliumTenants(db.pool, 4, kekOf(randomUUID()), 3);
        await seedMyceliumTenants(db.pool, 6, null, 1);
      },
      async (db) => {
        const validated = await createActivities({ db: db.pool, keys: testKeys(['v1']), env }).validateRotation(
          request,
        );
        expect(validated.census).toEqual([
          { kekId: '1', rows: 15, sampled: 15, readable: 15, opens: 12 },
          { kekId: '2', rows: 5, sampled: 5, readable: 5, opens: 5 },
          { kekId: '3', rows: 4, sampled: 4, readable: 4 },
          { kekId: '(none)', rows: 6, sampled: 0, readable: 0 },
        ]);
      },
    ));
});
