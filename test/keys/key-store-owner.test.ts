// Issue 24, finding 1: destroying a KEK in a shared key store deleted it for every other keyspace. A key store now
// belongs to one keyspace: a configuration that shares one is refused at load (test/unit/targets-config.test.ts), the
// store records which keyspace owns each KEK, and a destruction proves that no registry it can see still holds the key.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { dekFingerprints, seedTenants } from '../../src/dev/tenants';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { FileKeyring } from '../../src/keyring/drivers/file';
import type { StoreDriver } from '../../src/keyring/driver';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { parseTargetsConfig } from '../../src/targets/config';
import { TargetRuntimes } from '../../src/targets/runtime';
import { KeyspaceMismatchError, RetireRefusedError, TargetConfigError } from '../../src/errors';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyspaceIn } from '../helpers/keyspace';
import { fingerprintIn, storedIds } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** The state a rotation v1 → v2 leaves once the restore window has ended: v1 retired, restorable until the past. */
async function retiredAndWindowEnded(db: Pool, keys: StoreDriver, target = BUILTIN_TARGET): Promise<void> {
  const registry = new KekRegistry(db, target);
  await registry.register('v2', await fingerprintIn(keys, 'v2'));
  await registry.promote('v1', 'v2');
  await inTransaction(db, (client) => registry.retire('v1', 0, client));
}

/** A database of rekey's own table whose tenants are wrapped by `v1`, as an application on that keyring made them. */
async function keyspaceOn(keys: StoreDriver, tenants: number): Promise<TestDatabase> {
  const db = await createTestDatabase();
  await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
  await seedTenants({ db: db.pool, keys, kekId: 'v1', count: tenants, prefix: 'orders-' });
  return db;
}

describe('Finding 1: a key store belongs to one keyspace', () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-owner-'));
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()));
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it("the issue's reproduction (a second target 'orders' with keys: default beside rekey's own) is refused when the configuration loads", () => {
    const config = `targets:\n  orders:\n    preset: rekey\n    table: public.orders\n    id: order_id\n    keys: { provider: default }\n`;
    expect(() => parseTargetsConfig(config, 'rekey.yaml')).toThrow(TargetConfigError);
    expect(() => parseTargetsConfig(config, 'rekey.yaml')).toThrow(
      "targets 'rekey' and 'orders' both take their KEKs from the process's own key provider (keys: default)",
    );
  });

  describe('two processes on two databases sharing one keyring file', () => {
    let file: string;
    let orders: TestDatabase;
    let billing: TestDatabase;
    let before: Map<string, string>;

    beforeAll(async () => {
      file = path.join(scratch, 'keyring.json');
      // Made by `rekey keys generate`: a keyring written before owners existed records none.
      const keyring = FileKeyring.open(file, { create: true });
      await generateKek(keyring, 'v1');
      await generateKek(keyring, 'v2');
      keyring.close();
      orders = await keyspaceOn(FileKeyring.open(file), 3);
      // Its rows moved to v2 already (its rotation reached retire): none left on v1.
      billing = await keyspaceOn(FileKeyring.open(file), 0);
      databases.push(orders, billing);
      before = await dekFingerprints(orders.pool, FileKeyring.open(file));
    });

    it('the first keyspace that uses the file adopts its KEKs, durably, before anything else happens', async () => {
      // The orders deployment's worker validates a rotation: the file now records orders as the owner.
      const activities = createActivities({ db: orders.pool, keys: FileKeyring.open(file) });
      await activities.validateRotation({ from: 'v1', to: 'v2', dryRun: true });
      const ordersKeyspace = await keyspaceIn(orders.pool);
      const stored = JSON.parse(fs.readFileSync(file, 'utf8')) as { keks: { id: string; owner?: string }[] };
      expect(stored.keks.map((k) => [k.id, k.owner])).toEqual([
        ['v1', ordersKeyspace.id],
        ['v2', ordersKeyspace.id],
      ]);
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    });

    it("the other keyspace's destroy, once its window has ended, is refused by the owner record: the KEK stays in the file and the owner's rows still open", async () => {
      const keys = FileKeyring.open(file);
      await retiredAndWindowEnded(billing.pool, keys);
      const destroyed = await createActivities({ db: billing.pool, keys })
        .destroyKek({ kekId: 'v1' })
        .catch((err: unknown) => err);
      expect(destroyed).toBeInstanceOf(KeyspaceMismatchError);
      const [ordersKeyspace, billingKeyspace] = [await keyspaceIn(orders.pool), await keyspaceIn(billing.pool)];
      expect((destroyed as Error).message).toBe(
        `not destroying KEK 'v1': keyring file ${file} records it as keyspace ${ordersKeyspace.id}'s, and target 'rekey' is keyspace ${billingKeyspace.id}. ` +
          `A key store belongs to one keyspace: two that share one destroy each other's keys. Give target 'rekey' keys of its own; ` +
          `the owner's own rotations retire and destroy this KEK`,
      );
      expect((await storedIds(FileKeyring.open(file))).includes('v1')).toBe(true);
      expect((await new KekRegistry(billing.pool, BUILTIN_TARGET).get('v1'))?.state).toBe('retired');
      expect(await dekFingerprints(orders.pool, FileKeyring.open(file))).toEqual(before);
    });

    it("the other keyspace's rotation is refused at its first step, before it writes anything", async () => {
      const refused = await createActivities({ db: billing.pool, keys: FileKeyring.open(file) })
        .validateRotation({ from: 'v2', to: 'new' })
        .catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(KeyspaceMismatchError);
      expect((refused as Error).message).toMatch(
        /^not rotating with KEK 'v2': keyring file .* records it as keyspace /,
      );
      expect(await storedIds(FileKeyring.open(file))).toEqual(['v1', 'v2']);
    });
  });

  it("a destroy is refused while another registry this worker can see holds the same key, whatever its id or store (the environment's copy of a keyring's KEK)", async () => {
    const file = path.join(scratch, 'copied.json');
    const keyring = FileKeyring.open(file, { create: true });
    await generateKek(keyring, 'v1');
    await generateKek(keyring, 'v2');
    const db = await keyspaceOn(keyring, 0);
    databases.push(db);
    // Another target of the same database, another process's: the same bytes under another id in its environment.
    const copied = JSON.parse(fs.readFileSync(file, 'utf8')) as { keks: { id: string; key: string }[] };
    const env = new EnvKeyProvider({ ORDERS_KEK_o1: copied.keks[0]!.key }, 'ORDERS');
    await new KekRegistry(db.pool, 'orders').seedActive('o1', await fingerprintIn(env, 'o1'));
    await retiredAndWindowEnded(db.pool, keyring);
    const refused = await createActivities({ db: db.pool, keys: keyring })
      .destroyKek({ kekId: 'v1' })
      .catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(RetireRefusedError);
    const { databaseId } = await keyspaceIn(db.pool);
    expect((refused as Error).message).toBe(
      `KEK 'v1' (${await fingerprintIn(keyring, 'v1')}) is still in another registry as 'o1' of target 'orders' (active) in database ${databaseId}: not destroying it. ` +
        'A key store belongs to one keyspace; retire it there first, or give that target keys of its own',
    );
    expect((await storedIds(FileKeyring.open(file))).includes('v1')).toBe(true);
  });

  it('a KEK in the environment: the destroy result says which variable to remove and that rekey checked only the registries it can see, naming them', async () => {
    const envKeys = {
      REKEY_KEK_v1: randomBytes(32).toString('base64url'),
      REKEY_KEK_v2: randomBytes(32).toString('base64url'),
    };
    const keys = new EnvKeyProvider(envKeys);
    const db = await keyspaceOn(keys, 0);
    databases.push(db);
    await retiredAndWindowEnded(db.pool, keys);
    const targets = new TargetRuntimes({
      db: db.pool,
      keys,
      config: parseTargetsConfig(undefined, 'the preset targets', {}),
      env: {},
    });
    try {
      const report = await createActivities({ db: db.pool, keys, targets }).destroyKek({ kekId: 'v1' });
      const { databaseId } = await keyspaceIn(db.pool);
      expect(report).toMatchObject({ outcome: 'destroyed', operatorMustRemove: true });
      expect(report.detail).toBe(
        'rekey cannot remove an environment variable: remove REKEY_KEK_v1 from every worker, admin API and application process ' +
          '(and from wherever their environment is kept: compose files, secrets, CI). ' +
          `rekey checked the registries it can see (every target's in the databases of targets rekey, mycelium, talos in database ${databaseId}) ` +
          'and none holds this key; a process of another configuration or another database is not among them: make sure none of them reads it before you remove it',
      );
    } finally {
      await targets.close();
    }
  });
});
