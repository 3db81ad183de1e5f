import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { describe, expect, it } from 'vitest';
import { AppInstances } from '../../src/store/app-instances';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { TenantCrypto } from '../../src/tenant-crypto';
import { createTestDatabase, useTestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { fingerprintIn } from '../helpers/store-keys';

describe('application API (TenantCrypto)', () => {
  const db = useTestDatabase();
  const keys = testKeys(['v1', 'v2'], 'v1');

  it('creates a DEK on first use, wrapped with the current KEK, and round-trips data; a promotion reaches it within the TTL', async () => {
    const warnings: string[] = [];
    const app = new TenantCrypto({ db: db.pool, keys, registryTtlMs: 50, warn: (m) => warnings.push(m) });
    await app.start();
    try {
      const ciphertext = await app.encrypt('acme', 'totp seed');
      expect(ciphertext.startsWith('v2:')).toBe(true);
      expect((await new TenantDekStore(db.pool).find('acme'))?.kekId).toBe('v1');

      const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
      await registry.register('v2', await fingerprintIn(keys, 'v2'));
      await registry.promote('v1', 'v2');
      await new Promise((resolve) => setTimeout(resolve, 120));

      await app.encrypt('globex', 'webhook secret');
      expect((await new TenantDekStore(db.pool).find('globex'))?.kekId).toBe('v2');
      await app.rewriteDek('acme');
      const acme = await new TenantDekStore(db.pool).find('acme');
      expect(acme?.kekId).toBe('v2');
      expect(acme?.version).toBe(2n);
      expect((await app.decrypt('acme', ciphertext)).toString()).toBe('totp seed');
      expect(warnings).toEqual([
        "configuration names 'v1' as the current KEK, but the registry's active KEK is 'v2': using the registry",
      ]);

      const fleet = await new AppInstances(db.pool, BUILTIN_TARGET).live(60_000);
      expect(fleet.find((i) => i.instanceId === app.instanceId)).toMatchObject({
        unwrapKekIds: ['v1', 'v2'],
        wrapKekId: 'v2',
      });
    } finally {
      await app.stop();
    }
    expect((await new AppInstances(db.pool, BUILTIN_TARGET).live(60_000)).map((i) => i.instanceId)).not.toContain(
      app.instanceId,
    );
  });

  it('an announcement under way when stop() is called does not outlive it: the stopped instance leaves the fleet (it stayed live)', async () => {
    const held = keys;
    const app = new TenantCrypto({ db: db.pool, keys: held, registryTtlMs: 60_000 });
    await app.start();
    // The registry lists a KEK this instance lacks, so its next refresh reloads its keys: hold that reload open.
    await new KekRegistry(db.pool, BUILTIN_TARGET).register('v9', 'f'.repeat(64));
    let release!: () => void;
    const reloadHeld = new Promise<void>((resolve) => (release = resolve));
    let reloading!: () => void;
    const reloadStarted = new Promise<void>((resolve) => (reloading = resolve));
    const reload = held.reload.bind(held);
    held.reload = async () => {
      reloading();
      await reloadHeld;
      return reload();
    };
    try {
      const refreshing = app.refresh();
      await reloadStarted;
      const stopping = app.stop();
      release();
      await Promise.all([refreshing, stopping]);
    } finally {
      held.reload = reload;
      await db.pool.query(`DELETE FROM rekey.kek_events WHERE kek_id = 'v9'`);
      await db.pool.query(`DELETE FROM rekey.keks WHERE kek_id = 'v9'`);
    }

    const live = await new AppInstances(db.pool, BUILTIN_TARGET).live(60_000);
    expect(live.map((i) => i.instanceId)).not.toContain(app.instanceId);
  });

  it('Finding 11: with dekCacheTtlMs 0 nothing is cached, and every call still ends (it looped forever)', async () => {
    const app = new TenantCrypto({ db: db.pool, keys, dekCacheTtlMs: 0 });
    await app.start();
    try {
      const ciphertext = await app.encrypt('no-cache', 'webhook secret');
      expect((await app.decrypt('no-cache', ciphertext)).toString()).toBe('webhook secret');
      await app.rewriteDek('no-cache');
      expect((await app.decrypt('no-cache', ciphertext)).toString()).toBe('webhook secret');
    } finally {
      await app.stop();
    }
  });

  it('two instances creating the same tenant at once end up sharing one DEK', async () => {
    const a = new TenantCrypto({ db: db.pool, keys });
    const b = new TenantCrypto({ db: db.pool, keys });
    await a.start();
    await b.start();
    try {
      const [fromA, fromB] = await Promise.all([a.encrypt('initech', 'x'), b.encrypt('initech', 'y')]);
      expect((await b.decrypt('initech', fromA)).toString()).toBe('x');
      expect((await a.decrypt('initech', fromB)).toString()).toBe('y');
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('an instance whose current KEK has the right id but different key bytes refuses to start', async () => {
    const impostor = new TenantCrypto({ db: db.pool, keys: testKeys(['v2']) });
    await expect(impostor.start()).rejects.toThrow(
      /KEK 'v2' in the key provider has fingerprint kcv1:\w+, but the registry recorded/,
    );
  });

  it("the 'registered' event of the KEK an application seeds names the application, not 'rekey (rotation step)' (it named the rotation)", async () => {
    const fresh = await createTestDatabase();
    const app = new TenantCrypto({ db: fresh.pool, keys });
    const configured = new TenantCrypto({ db: fresh.pool, keys: testKeys(['v1', 'v2'], 'v2'), actor: 'billing-api' });
    try {
      await app.start();
      const registry = new KekRegistry(fresh.pool, BUILTIN_TARGET);
      await registry.register('v2', await fingerprintIn(keys, 'v2'));
      const { rows } = await fresh.pool.query<{ kek_id: string; event: string; actor: string }>(
        'SELECT kek_id, event, actor FROM rekey.kek_events WHERE target = $1 ORDER BY id',
        [BUILTIN_TARGET],
      );
      expect(rows).toEqual([
        { kek_id: 'v1', event: 'registered', actor: `application (TenantCrypto ${app.instanceId})` },
        { kek_id: 'v2', event: 'registered', actor: 'rekey (rotation step)' },
      ]);

      await fresh.pool.query('DELETE FROM rekey.kek_events');
      await fresh.pool.query('DELETE FROM rekey.keks');
      await configured.start();
      const seeded = await fresh.pool.query<{ kek_id: string; event: string; actor: string }>(
        'SELECT kek_id, event, actor FROM rekey.kek_events WHERE target = $1 ORDER BY id',
        [BUILTIN_TARGET],
      );
      expect(seeded.rows).toEqual([{ kek_id: 'v2', event: 'registered', actor: 'billing-api' }]);
    } finally {
      await app.stop();
      await configured.stop();
      await fresh.drop();
    }
  });
});
