// The retire and destroy steps prove the legacy values of a target's configured `fields` (docs/02: another
// application's values still encrypted by the KEK itself, no DEK), not only its DEKs: retire refuses while one opens
// under the KEK (LegacyValuesRemainError) unless the run gives a reason (allowLegacyValues); destroy refuses while one
// opens under it whatever the reason, and a value that opens under no KEK (lost already) holds nothing back. Here
// rekey's own table with a billing application's card tokens as its field, written by the fixture's own AES-GCM.
import { createCipheriv, randomBytes, randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { afterAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { exitCodeFor, httpStatusFor, LegacyValuesRemainError } from '../../src/errors';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { parseTargetsConfig } from '../../src/targets/config';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { wrapRekeyDek } from '../helpers/rekey-format';

const CONFIG = `targets:
  rekey:
    preset: rekey
    fields:
      - name: card_token
        table: billing.payment_methods
        id: method_id
        column: details
        path: [card, token]
        tenant: { column: account_id }
        legacy: { value: { kind: combined, column: value, encoding: base64 }, aad: { read: [[]] } }
        current:
          value: { kind: combined, column: value, encoding: base64, prefix: 'f1:' }
          aad: { read: [[{ column: tenant }, { text: ':card_token' }]] }
`;

/** The application's legacy card token: base64(nonce ‖ AES-256-GCM ciphertext ‖ tag) under the KEK, no AAD. */
function sealLegacy(kek: Buffer, text: string): string {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, nonce);
  return Buffer.concat([nonce, cipher.update(text, 'utf8'), cipher.final(), cipher.getAuthTag()]).toString('base64');
}

describe("retire and destroy prove the legacy values of a target's configured fields", () => {
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((d) => d.drop()));
  });

  /** v1 → v2 promoted, every DEK under v2; one card token sealed by `sealedBy` (v1's key, or a key of no KEK). */
  async function setUp(sealedBy: 'v1' | 'nothing') {
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v2');
    const [v1, v2] = [env.TEST_KEK_v1!, env.TEST_KEK_v2!].map((k) => Buffer.from(k, 'base64url'));
    const db = await createTestDatabase();
    databases.push(db);
    const schema = `billing_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    const config = parseTargetsConfig(CONFIG.replace('billing.payment_methods', `${schema}.payment_methods`));
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', kekFingerprint(v1!));
    await registry.register('v2', kekFingerprint(v2!));
    await registry.promote('v1', 'v2');
    await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ('acct-1', 'v2', $1)`, [
      wrapRekeyDek(v2!, 'v2', 'acct-1', randomBytes(32)),
    ]);
    await db.pool.query(`CREATE SCHEMA ${schema}`);
    await db.pool.query(
      `CREATE TABLE ${schema}.payment_methods (method_id text PRIMARY KEY, account_id text NOT NULL, details jsonb)`,
    );
    await db.pool.query(`INSERT INTO ${schema}.payment_methods VALUES ('pm-1', 'acct-1', $1)`, [
      { card: { token: sealLegacy(sealedBy === 'v1' ? v1! : randomBytes(32), 'tok_4242') } },
    ]);
    const activities = createActivities({ db: db.pool, keys: provider, targets: config });
    return { db, registry, activities, schema, close: () => provider.close() };
  }

  it('retire of v1 is refused while a legacy value of the field opens under v1, naming how many, where, and rekey migrate-dek', async () => {
    const { registry, activities, schema, close } = await setUp('v1');
    try {
      const refused = activities.retireKek({ target: 'rekey', from: 'v1', restoreWindowMs: 86_400_000 });
      await expect(refused).rejects.toThrow(LegacyValuesRemainError);
      await expect(refused).rejects.toThrow(
        new RegExp(`1 legacy value\\(s\\) encrypted directly by its KEK 'v1' \\(1 in ${schema}\\.payment_methods`),
      );
      await expect(refused).rejects.toThrow('`rekey migrate-dek --target rekey`');
      expect((await registry.require('v1')).state).toBe('decrypt_only');
    } finally {
      close();
    }
  });

  it("the rotation's start and its retire step refuse legacy values in the same words (what is left, where, why, both ways on: rekey migrate-dek, or the reason by the CLI's flag or the admin API's field), with one exit code and HTTP status", async () => {
    const { activities, schema, close } = await setUp('v1');
    try {
      const refusal = async (step: Promise<unknown>) => {
        const err = await step.then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(LegacyValuesRemainError);
        expect([exitCodeFor(err), httpStatusFor(err)]).toEqual([5, 422]);
        return (err as Error).message;
      };
      const atStart = await refusal(activities.validateRotation({ target: 'rekey', from: 'v1', to: 'v2' }));
      const atRetire = await refusal(
        activities.retireKek({ target: 'rekey', from: 'v1', restoreWindowMs: 86_400_000 }),
      );
      const where = `1 in ${schema}.payment_methods`;
      const ways =
        'Run `rekey migrate-dek --target rekey` first, or give the reason to go on when the rotation starts: --allow-legacy-values <reason> (allow_legacy_values in the admin API), recorded in the run';
      expect(atStart).toMatch(
        new RegExp(
          `^target 'rekey' still holds 1 legacy value\\(s\\) encrypted directly by its KEK \\(${where}[^)]*\\): they would become unreadable once the KEK retires; not starting the rotation\\. `,
        ),
      );
      expect(atRetire).toMatch(
        new RegExp(
          `^target 'rekey' still holds 1 legacy value\\(s\\) encrypted directly by its KEK 'v1' \\(${where}[^)]*\\): they would become unreadable once the KEK retires; not retiring it\\. The first 1: pm-1 \\(`,
        ),
      );
      expect(atStart.endsWith(ways)).toBe(true);
      expect(atRetire.endsWith(ways)).toBe(true);
    } finally {
      close();
    }
  });

  it("retire of v1 goes on with the run's reason (allowLegacyValues) although a legacy value opens under v1, and the step's log warns how many, where and the reason", async () => {
    const { registry, activities, schema, close } = await setUp('v1');
    try {
      // Run as Temporal runs it, with the activity's logger: the warning is the worker's log line.
      const warnings: string[] = [];
      const logger = new DefaultLogger('WARN', (entry) => {
        if (entry.level === 'WARN') warnings.push(entry.message);
      });
      await new MockActivityEnvironment(undefined, { logger }).run(
        (args: Parameters<typeof activities.retireKek>[0]) => activities.retireKek(args),
        {
          target: 'rekey',
          from: 'v1',
          restoreWindowMs: 86_400_000,
          allowLegacyValues: 'card tokens reissued by the processor',
        },
      );
      expect((await registry.require('v1')).state).toBe('retired');
      expect(warnings.filter((w) => w.includes('legacy value'))).toEqual([
        expect.stringMatching(
          new RegExp(
            `^retiring KEK 'v1' of target 'rekey' although 1 legacy value\\(s\\) encrypted directly by it remain \\(1 in ${schema}\\.payment_methods[^)]*\\): they become unreadable once it is destroyed; the run's reason \\(--allow-legacy-values\\): card tokens reissued by the processor$`,
          ),
        ),
      ]);
    } finally {
      close();
    }
  });

  it('destroy of v1 at the end of its window is refused while a legacy value of the field opens under it, and says to run rekey migrate-dek', async () => {
    const { db, registry, activities, close } = await setUp('v1');
    try {
      // Retired as a run with --allow-legacy-values retires it (or a build before this proof): the window has ended.
      await inTransaction(db.pool, (client) => registry.retire('v1', 0, client));
      const report = await activities.destroyKek({ target: 'rekey', kekId: 'v1' });
      expect(report.outcome, report.detail).toBe('refused');
      expect(report.needed).toBe(1);
      expect(report.neededRows).toEqual([
        { tenantId: 'pm-1', reason: expect.stringContaining("encrypted directly by 'v1' (no DEK)") as string },
      ]);
      expect(report.detail).toContain('`rekey migrate-dek --target rekey`');
      expect((await registry.require('v1')).state).toBe('retired');
    } finally {
      close();
    }
  });

  it('a legacy value that opens under no KEK (lost already) holds neither retire nor destroy back', async () => {
    const { db, registry, activities, close } = await setUp('nothing');
    try {
      await activities.retireKek({ target: 'rekey', from: 'v1', restoreWindowMs: 86_400_000 });
      expect((await registry.require('v1')).state).toBe('retired');
      // Its window has ended (as a day later).
      await db.pool.query(
        `UPDATE rekey.keks SET restorable_until = now() - interval '1 second' WHERE target = $1 AND kek_id = 'v1'`,
        [BUILTIN_TARGET],
      );
      const report = await activities.destroyKek({ target: 'rekey', kekId: 'v1' });
      expect(report.outcome, report.detail).toBe('destroyed');
      expect((await registry.require('v1')).state).toBe('destroyed');
    } finally {
      close();
    }
  });
});
