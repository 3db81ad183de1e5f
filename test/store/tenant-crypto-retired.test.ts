// The application's API refuses a DEK whose KEK the registry has retired, as the worker does (KekRetiredError), even
// while its key source still holds the key; a DEK under a decrypt-only (superseded) KEK still opens. The registry's
// states are reached through the worker's keyring, as a rotation reaches them, against PostgreSQL.
import { describe, expect, it } from 'vitest';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { TenantCrypto } from '../../src/tenant-crypto';
import { KekRetiredError } from '../../src/errors';
import { useTestDatabase } from '../helpers/database';
import { keyringFor, nothingNeeded, TEST_KEYSPACE } from '../helpers/keyring';
import { createTestKeys } from '../helpers/keys';

describe('application API (TenantCrypto) and the registry: a retired KEK opens nothing', () => {
  const db = useTestDatabase();

  it("refuses to open a DEK wrapped by a retired KEK (KekRetiredError naming the KEK and 'rekey keys restore'), though its key is still held; a DEK under a decrypt-only KEK still opens; after a restore both open", async () => {
    const { provider, env } = createTestKeys(['v1', 'v2', 'v3'], 'v1');
    // Nothing cached: every call opens its tenant's DEK through the registry.
    const warnings: string[] = [];
    const app = new TenantCrypto({
      db: db.pool,
      keys: provider,
      dekCacheTtlMs: 0,
      registryTtlMs: 60_000,
      warn: (m) => warnings.push(m),
    });
    // The worker's keyring over the same environment, as a rotation's steps use it.
    const keyring = keyringFor(db.pool, new EnvKeyProvider(env, 'TEST'), TEST_KEYSPACE);
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    const deks = new TenantDekStore(db.pool);
    await app.start();
    try {
      const underV1 = await app.encrypt('acme', 'totp seed');
      expect((await deks.find('acme'))?.kekId).toBe('v1');

      // Rotation v1 → v2: v2 provisioned (the environment holds it) and promoted; v1 decrypt-only.
      await keyring.provision('v2', { generate: false });
      await keyring.promote('v1', 'v2');
      await app.refresh();
      const underV2 = await app.encrypt('globex', 'webhook secret');
      expect((await deks.find('globex'))?.kekId).toBe('v2');

      // Rotation v2 → v3, and v1 retired. The row still labelled v1 stands for one a rotation's proof did not see
      // (a backup restored after the retirement): the proof itself is not the subject here.
      await keyring.provision('v3', { generate: false });
      await keyring.promote('v2', 'v3');
      const retired = await keyring.retire('v1', { restoreWindowMs: 3_600_000, prove: nothingNeeded });
      expect(retired).toMatchObject({ retired: { kekId: 'v1', state: 'retired' } });
      expect((await registry.require('v2')).state).toBe('decrypt_only');
      await app.refresh();

      // The key source still holds v1: only the registry's state refuses it.
      expect((await provider.list()).map((k) => k.kekId)).toContain('v1');
      const refused = await app.decrypt('acme', underV1).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(refused).toBeInstanceOf(KekRetiredError);
      expect(refused).toMatchObject({ kekId: 'v1', target: BUILTIN_TARGET });
      expect((refused as Error).message).toBe(
        `KEK 'v1' of target 'rekey' is retired: it may neither wrap nor unwrap. Within its restore window, 'rekey keys restore v1 --target rekey --reason "..."' brings it back as decrypt-only`,
      );
      // An application write of that tenant's DEK (a rewrap to the current KEK) is refused the same way.
      await expect(app.rewriteDek('acme')).rejects.toThrow(KekRetiredError);
      expect((await deks.find('acme'))?.kekId).toBe('v1');

      // v2 is superseded, not retired: its DEK opens.
      expect((await app.decrypt('globex', underV2)).toString()).toBe('webhook secret');

      // What the message tells the operator works: restored within its window, v1's DEK opens again.
      await keyring.restore('v1', 'acme still has a DEK under v1', 'alice');
      await app.refresh();
      expect((await app.decrypt('acme', underV1)).toString()).toBe('totp seed');
    } finally {
      await app.stop();
      keyring.close();
    }
  });
});
