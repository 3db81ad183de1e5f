import { randomUUID } from 'node:crypto';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { startRotation } from '../../src/client/rotations';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';
import { parseTargetsConfig } from '../../src/targets/config';
import { KekRegistry } from '../../src/store/kek-registry';
import { confirmStepUpdate, type RotationReport } from '../../src/workflows';
import { createApplicationDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { checkWithOneKek, createMyceliumSchema, kekOf, myceliumShape, seedMyceliumTenants } from '../helpers/mycelium';
import { keyspaceIn } from '../helpers/keyspace';
import { readmeBlock } from '../helpers/vault';
import { progressUntil, resultWithin, useTimeSkippingEnv, workflowBundle } from '../helpers/temporal';

/** The README's configuration: both token_secrets read from Vault KV, the old one as the secret's earlier version. */
const CONFIG = readmeBlock('<!-- config: mycelium-vault -->', 'yaml');

describe("the mycelium preset with the gateway's token_secrets in Vault KV", () => {
  const server = useTimeSkippingEnv();
  let vault: VaultServer;
  beforeAll(async () => {
    vault = await startVault(inject('toolchain').vault);
  });
  afterAll(async () => {
    await vault?.stop();
  });

  it('a rotation reads the old token_secret (version 1 of the secret) and the new one (its latest) from Vault: every DEK and data field reads with the new one alone', async () => {
    const [gen1, gen2] = [randomUUID(), randomUUID()];
    // As an operator keeps the gateway's settings in Vault: the new token_secret written as a new version.
    await vaultRequest(vault, 'POST', 'secret/data/mycelium/gateway', { data: { token_secret: gen1 } });
    await vaultRequest(vault, 'POST', 'secret/data/mycelium/gateway', { data: { token_secret: gen2 } });
    const { db, shape } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    const taskQueue = `mycelium-vault-${randomUUID()}`;
    try {
      const onGen1 = await seedMyceliumTenants(db.pool, 200, kekOf(gen1), 1);
      const onGen2 = await seedMyceliumTenants(db.pool, 20, kekOf(gen2), 2);
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowBundle: workflowBundle(),
        // No MYC_TOKEN_SECRET, no MYC_OLD_TOKEN_SECRET: Vault's address and a token alone.
        activities: createActivities({
          db: db.pool,
          keys: testKeys(['v1']),
          env: vault.env,
          targets: parseTargetsConfig(CONFIG),
        }),
      });
      const report = await worker.runUntil(async () => {
        const started = await startRotation(
          server.env.client,
          { target: 'mycelium', from: '1', to: '2', gracePeriod: '1d' },
          { taskQueue, keyspace: await keyspaceIn(db.pool, 'mycelium') },
        );
        await progressUntil(started.handle, (p) => p.phase === 'grace', { withinMs: 60_000 });
        await server.env.sleep('1d');
        await progressUntil(started.handle, (p) => p.waiting?.step === 'retire', { withinMs: 60_000 });
        await started.handle.executeUpdate(confirmStepUpdate, {
          args: [{ step: 'retire', note: 'old token_secret version destroyed in Vault' }],
        });
        return resultWithin<RotationReport>(started.handle);
      });
      expect(report.outcome).toBe('completed');
      expect(report.counters).toMatchObject({ rewrapped: 200, alreadyOnTarget: 20, failed: 0 });
      // With the new token_secret alone (the fixture's own AES-GCM, not rekey's).
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, [...onGen1, ...onGen2])).toEqual([]);
      expect(await myceliumShape(db.pool)).toEqual(shape);
      const registry = new KekRegistry(db.pool, 'mycelium');
      expect(await registry.get('1')).toMatchObject({ state: 'retired' });
      expect(await registry.get('2')).toMatchObject({ state: 'active' });
    } finally {
      await db.drop();
    }
  });

  it('a token_secret the Vault secret does not hold is refused naming the Vault path and field, and the configuration refuses a Vault path with a leading slash', async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    try {
      const config = parseTargetsConfig(CONFIG.replaceAll('mycelium/gateway', `mycelium/${randomUUID()}`));
      const activities = createActivities({ db: db.pool, keys: testKeys(['v1']), env: vault.env, targets: config });
      await expect(activities.proposeKekId({ target: 'mycelium' })).rejects.toThrow(
        /^Vault secret\/mycelium\/[0-9a-f-]+ field token_secret is not set: set it to the gateway's current token_secret/,
      );
      expect(() => parseTargetsConfig(CONFIG.replace('path: mycelium/gateway', 'path: /mycelium/gateway'))).toThrow(
        "REKEY_CONFIG: targets.mycelium.keys.current.vault.path: must be a Vault path such as 'mycelium/token_secret' (no leading '/')",
      );
    } finally {
      await db.drop();
    }
  });
});
