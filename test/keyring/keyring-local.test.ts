// The keyring seam (issue 26) over the stores whose keys this process holds: the environment, the keyring file and
// Mycelium's token secrets, against PostgreSQL (the registry) and the files and variables themselves.
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileFormat } from '../../src/codec/sealed-format';
import { REKEY_DEK_FORMAT } from '../../src/codec/formats';
import { inlineRowCrypto } from '../../src/crypto/row-crypto';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { MyceliumTokenSecrets } from '../../src/keyring/drivers/mycelium-token-secret';
import { LocalCipher } from '../../src/keyring/cipher';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import {
  CipherReleasedError,
  KekFingerprintMismatchError,
  KekRetiredError,
  OperatorMustActError,
  RetireRefusedError,
} from '../../src/errors';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import {
  expectDestroyRefusedWhileOthersHold,
  expectForeignRefused,
  keyringFor,
  nothingNeeded,
  retiredWindowEnded,
  rotatedOn,
  RESTORES_AND_DESTRUCTIONS,
} from '../helpers/keyring';
import { kekOf } from '../helpers/mycelium';
import { fingerprintIn, storedIds } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** The KEK entries of a keyring file, as written. */
const keksIn = (file: string) =>
  (JSON.parse(fs.readFileSync(file, 'utf8')) as { keks: { id: string; owner?: string }[] }).keks;

const KEYSPACE = 'db-a/public.tenant_deks';
const OTHER = 'db-b/public.orders';

describe('the keyring and its drivers over keys held in this process', () => {
  let db: TestDatabase;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-keyring-'));
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
    fs.rmSync(scratch, { recursive: true, force: true });
  });
  const fresh = async () => {
    await db.pool.query('TRUNCATE rekey.kek_events, rekey.keks');
  };

  it('a read-only driver (the environment) answers every hook with OperatorMustActError carrying the exact instruction, naming the variable', async () => {
    const { provider } = createTestKeys(['v1', 'v2']);
    const driver = provider;
    const registry: never[] = [];
    const answers: [() => Promise<unknown>, string][] = [
      [
        () => driver.provision('v3', { owner: KEYSPACE }),
        "set TEST_KEK_v3 (32 random bytes as base64url: openssl rand -base64 32 | tr '+/' '-_' | tr -d '=') in every worker, admin API and application process",
      ],
      [() => driver.claim('v3', registry), 'the environment names its keys itself: nothing to claim'],
      [
        () => driver.promote('v1', 'v2', registry),
        "set TEST_CURRENT_KEK_ID=v2 in every worker, admin API and application process that reads it (the registry names 'v2' active already)",
      ],
      [
        () => driver.retire('v1', registry),
        'keep TEST_KEK_v1 set until its restore window ends: rekey says when to remove it once it is destroyed',
      ],
      [
        () => driver.restore('v1', registry),
        'set TEST_KEK_v1 again in every worker, admin API and application process, to the key the registry recorded',
      ],
      [
        () => driver.destroy('v1', registry),
        'rekey cannot remove an environment variable: remove TEST_KEK_v1 from every worker, admin API and application process (and from wherever their environment is kept: compose files, secrets, CI)',
      ],
      [
        () => driver.adopt(KEYSPACE),
        'the environment records no owner: give each keyspace variables of its own prefix',
      ],
    ];
    for (const [answer, instruction] of answers) {
      const err = await answer().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(OperatorMustActError);
      expect((err as OperatorMustActError).instruction).toBe(instruction);
      expect((err as OperatorMustActError).message).toBe(
        `environment variables TEST_KEK_<id> is read-only to rekey: ${instruction}`,
      );
      expect((err as OperatorMustActError).kind).toBe('invalid');
    }
    provider.close();
  });

  it("a read-only driver (Mycelium's token secrets) answers every hook with OperatorMustActError, and the keyring names its old and current secret for the rotation in one place", async () => {
    const current = randomUUID();
    const old = randomUUID();
    const secrets = new MyceliumTokenSecrets(
      { current: { env: 'MYC_CURRENT' }, old: { env: 'MYC_OLD' } },
      { MYC_CURRENT: current, MYC_OLD: old },
    );
    const driver = secrets;
    for (const answer of [
      () => driver.provision('2', { owner: KEYSPACE }),
      () => driver.claim('2', []),
      () => driver.promote('1', '2', []),
      () => driver.retire('1', []),
      () => driver.restore('1', []),
      () => driver.destroy('1', []),
      () => driver.adopt(KEYSPACE),
    ]) {
      await expect(answer()).rejects.toThrow(OperatorMustActError);
    }
    await expect(driver.provision('2', { owner: KEYSPACE })).rejects.toThrow(
      "rekey cannot make a token_secret for KEK '2': give the gateway its new token_secret",
    );
    await fresh();
    const keyring = keyringFor(db.pool, secrets, KEYSPACE);
    expect(await keyring.held()).toEqual([]);
    keyring.nameRotation('1', '2');
    const held = await keyring.held();
    expect(held.map((k) => [k.kekId, k.fingerprint]).sort()).toEqual(
      [
        ['1', kekFingerprint(kekOf(old))],
        ['2', kekFingerprint(kekOf(current))],
      ].sort(),
    );
    expect(await keyring.configuredCurrent()).toBe('2');
    // The names follow the rotation; the keys are found by their fingerprints.
    const cipher = await keyring.cipher('1');
    expect(cipher.fingerprint).toBe(kekFingerprint(kekOf(old)));
    cipher.release();
    keyring.close();
  });

  it('a released cipher refuses every use and its key bytes are zero', async () => {
    const key = randomBytes(32);
    const fingerprint = kekFingerprint(key);
    const cipher = new LocalCipher('v1', fingerprint, key, 'a test', () => inlineRowCrypto);
    const { dek, wrapped } = await cipher.newDek('tenant-1');
    expect((await cipher.open('tenant-1', wrapped)).equals(dek)).toBe(true);
    await cipher.selfTest();
    cipher.release();
    expect(cipher.released).toBe(true);
    expect(key.every((byte) => byte === 0)).toBe(true);
    const codec = compileFormat(REKEY_DEK_FORMAT);
    const uses: (() => Promise<unknown>)[] = [
      () => cipher.newDek('tenant-1'),
      () => cipher.open('tenant-1', wrapped),
      () => cipher.selfTest(),
      () => cipher.checkRows(codec, [{ tenant_id: 'tenant-1', wrapped_dek: wrapped }]),
      () => cipher.moveTo(cipher, 'tenant-1', wrapped),
    ];
    for (const use of uses) await expect(use()).rejects.toThrow(CipherReleasedError);
    expect(() => cipher.rowKek()).toThrow("the cipher of KEK 'v1'");
    // Released twice: still released, nothing else happens.
    cipher.release();
    dek.fill(0);
  });

  it("a cipher is given only for the registered key: a key of another fingerprint under the KEK's id is refused, and so is a retired KEK", async () => {
    await fresh();
    const { provider } = createTestKeys(['v1', 'v2']);
    const registry = new KekRegistry(db.pool, 'rekey');
    await registry.seedActive('v1', await fingerprintIn(provider, 'v1'));
    await registry.register('v2', kekFingerprint(randomBytes(32)));
    const keyring = keyringFor(db.pool, provider, KEYSPACE);
    await expect(keyring.cipher('v2')).rejects.toThrow(KekFingerprintMismatchError);
    // The cipher checks the bytes it is given, whatever its caller says.
    const v2Fingerprint = await fingerprintIn(provider, 'v2');
    expect(() => new LocalCipher('v1', v2Fingerprint, randomBytes(32), 'x', () => inlineRowCrypto)).toThrow(
      KekFingerprintMismatchError,
    );
    await registry.promote('v1', 'v2').catch(() => undefined);
    await db.pool.query(`UPDATE rekey.keks SET state = 'retired', retired_at = now() WHERE kek_id = 'v1'`);
    await expect(keyring.cipher('v1')).rejects.toThrow(KekRetiredError);
    keyring.close();
  });

  it("a trial cipher (retire's and destroy's proof of legacy values) opens under a decrypt-only or retired KEK by its recorded fingerprint, is released after its use, even a failed one, and is none for a destroyed KEK", async () => {
    await fresh();
    const { provider } = createTestKeys(['v1', 'v2']);
    const registry = new KekRegistry(db.pool, 'rekey');
    await registry.seedActive('v1', await fingerprintIn(provider, 'v1'));
    await registry.register('v2', await fingerprintIn(provider, 'v2'));
    await registry.promote('v1', 'v2');
    const keyring = keyringFor(db.pool, provider, KEYSPACE);
    const { dek, wrapped } = await keyring.withCiphers(['v1'], ([v1]) => v1!.newDek('tenant-1'));
    const kept: LocalCipher[] = [];
    const tried = async () =>
      keyring.withTrialCipher('v1', async (cipher) => {
        if (cipher === undefined) return undefined;
        kept.push(cipher as LocalCipher);
        return (await cipher.open('tenant-1', wrapped)).equals(dek);
      });
    expect(await tried()).toBe(true); // decrypt-only
    await db.pool.query(`UPDATE rekey.keks SET state = 'retired', retired_at = now() WHERE kek_id = 'v1'`);
    expect(await tried()).toBe(true); // retired: keyring.cipher refuses it, a trial does not
    await expect(
      keyring.withTrialCipher('v1', (cipher) => {
        kept.push(cipher as LocalCipher);
        return Promise.reject(new Error('the trial failed'));
      }),
    ).rejects.toThrow('the trial failed');
    expect(kept).toHaveLength(3);
    for (const cipher of kept) {
      expect(cipher.released).toBe(true);
      await expect(cipher.open('tenant-1', wrapped)).rejects.toThrow(CipherReleasedError);
    }
    await db.pool.query(`UPDATE rekey.keks SET state = 'destroyed' WHERE kek_id = 'v1'`);
    expect(await tried()).toBeUndefined();
    expect(await keyring.withTrialCipher('v9', (cipher) => Promise.resolve(cipher))).toBeUndefined();
    dek.fill(0);
    keyring.close();
  });

  it('the keyring owns the lifecycle of a keyring file: provision writes the file and registers the fingerprint, promote, retire, restore (recorded with its reason) and destroy after the window, which removes the key from the file', async () => {
    await fresh();
    const file = path.join(scratch, `${randomUUID()}.json`);
    const store = FileKeyring.open(file, { create: true });
    const keyring = keyringFor(db.pool, store, KEYSPACE);
    const registry = new KekRegistry(db.pool, 'rekey');
    const v1 = await keyring.provision('v1', { generate: true });
    await registry.seedActive('v1', v1.fingerprint);
    expect(await keyring.proposeKekId()).toBe('v2');
    const v2 = await keyring.provision('v2', { generate: true });
    expect((await registry.require('v2')).fingerprint).toBe(v2.fingerprint);
    expect(keksIn(file).map((k) => k.owner)).toEqual([KEYSPACE, KEYSPACE]);
    expect(await keyring.promote('v1', 'v2')).toEqual({});
    expect((await registry.active())?.kekId).toBe('v2');
    const retired = await keyring.retire('v1', { restoreWindowMs: 3_600_000, prove: nothingNeeded });
    expect('retired' in retired && retired.retired.state).toBe('retired');
    const restored = await keyring.restore('v1', 'a tenant still reads v1', 'alice');
    expect(restored.state).toBe('decrypt_only');
    expect((await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).map((e) => [e.event, e.reason, e.actor])).toEqual([
      ['restored', 'a tenant still reads v1', 'alice'],
    ]);
    await keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded });
    const destroyed = await keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 });
    expect(destroyed).toMatchObject({ outcome: 'destroyed' });
    expect((await registry.require('v1')).state).toBe('destroyed');
    expect(keksIn(file).map((k) => k.id)).toEqual(['v2']);
    keyring.close();
  });

  it("the registry is written before the store's hook, in one transaction: a destroy the store fails leaves the KEK retired with no event, and the retry destroys it", async () => {
    await fresh();
    const file = path.join(scratch, `${randomUUID()}.json`);
    const store = FileKeyring.open(file, { create: true });
    await generateKek(store, 'v1', { owner: KEYSPACE });
    await generateKek(store, 'v2', { owner: KEYSPACE });
    const registry = await rotatedOn(db.pool, store);
    await retiredWindowEnded(db.pool, registry);
    const keyring = keyringFor(db.pool, store, KEYSPACE);
    const written = fs.readFileSync(file);
    fs.writeFileSync(file, 'not a keyring');
    await expect(keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow();
    expect((await registry.require('v1')).state).toBe('retired');
    expect(await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).toEqual([]);
    fs.writeFileSync(file, written, { mode: 0o600 });
    expect(await keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).toMatchObject({
      outcome: 'destroyed',
      detail: `removed from ${file}`,
    });
    expect((await registry.require('v1')).state).toBe('destroyed');
    expect((await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).map((e) => e.event)).toEqual(['destroyed']);
    expect(keksIn(file).map((k) => k.id)).toEqual(['v2']);
    keyring.close();
  });

  it('a retirement whose proof finds rows that need the KEK is refused and the registry keeps the KEK decrypt-only; a destruction refused so reopens its window', async () => {
    await fresh();
    const { provider } = createTestKeys(['v1', 'v2']);
    const registry = await rotatedOn(db.pool, provider);
    const keyring = keyringFor(db.pool, provider, KEYSPACE);
    const needs = () =>
      Promise.resolve({
        tried: 1,
        relabelled: 0,
        needed: 1,
        neededRows: [{ tenantId: 't', reason: 'opens under v1' }],
        contended: 0,
      });
    expect(await keyring.retire('v1', { restoreWindowMs: 0, prove: needs })).toMatchObject({ refused: { needed: 1 } });
    expect((await registry.require('v1')).state).toBe('decrypt_only');
    await retiredWindowEnded(db.pool, registry);
    const refused = await keyring.destroy('v1', { prove: needs, reopenForMs: 3_600_000 });
    expect(refused).toMatchObject({ outcome: 'refused' });
    expect((await registry.require('v1')).restorableUntil!.getTime()).toBeGreaterThan(Date.now());
    keyring.close();
  });

  it('a KEK in the environment: destroy marks it destroyed and hands on what the operator must remove, with what rekey checked', async () => {
    await fresh();
    const { provider } = createTestKeys(['v1', 'v2']);
    const registry = await rotatedOn(db.pool, provider);
    const keyring = keyringFor(db.pool, provider, KEYSPACE);
    const retired = await keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded });
    expect(retired).toMatchObject({ operatorMust: expect.stringContaining('keep TEST_KEK_v1 set') as unknown });
    const report = await keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 });
    expect(report).toMatchObject({ outcome: 'destroyed', operatorMustRemove: true });
    expect(report.outcome === 'destroyed' && report.detail).toBe(
      'rekey cannot remove an environment variable: remove TEST_KEK_v1 from every worker, admin API and application process (and from wherever their environment is kept: compose files, secrets, CI). rekey checked the registries of this database: make sure none of them reads it before you remove it',
    );
    expect((await registry.require('v1')).state).toBe('destroyed');
    keyring.close();
  });

  describe('a keyring refuses to retire or destroy a KEK its keyspace does not own', () => {
    it('the keyring file: its owner record names another keyspace', async () => {
      await fresh();
      const file = path.join(scratch, `${randomUUID()}.json`);
      const store = FileKeyring.open(file, { create: true });
      await generateKek(store, 'v1', { owner: OTHER });
      await generateKek(store, 'v2', { owner: OTHER });
      const registry = await rotatedOn(db.pool, store);
      await expectForeignRefused(db.pool, keyringFor(db.pool, store, KEYSPACE), registry, OTHER);
      expect(await storedIds(FileKeyring.open(file))).toEqual(['v1', 'v2']);
    });

    it('the environment (no owner record): destroy is refused while another keyspace’s registry holds the same key', async () => {
      await fresh();
      const { provider } = createTestKeys(['v1', 'v2']);
      const registry = await rotatedOn(db.pool, provider);
      await expectDestroyRefusedWhileOthersHold(db.pool, keyringFor(db.pool, provider, KEYSPACE), registry);
    });

    it("Mycelium's token secrets (no owner record): destroy is refused while another keyspace’s registry holds the same key", async () => {
      await fresh();
      const old = randomUUID();
      const secrets = new MyceliumTokenSecrets(
        { current: { env: 'C' }, old: { env: 'O' } },
        { C: randomUUID(), O: old },
      );
      const keyring = keyringFor(db.pool, secrets, KEYSPACE);
      keyring.nameRotation('1', '2');
      const [v1, v2] = [await keyring.fingerprintOf('1'), await keyring.fingerprintOf('2')];
      const registry = new KekRegistry(db.pool, 'rekey');
      await registry.seedActive('1', v1);
      await registry.register('2', v2);
      await registry.promote('1', '2');
      await new KekRegistry(db.pool, 'orders').seedActive('1', kekFingerprint(kekOf(old)));
      // Retire is refused as well (orders still needs the key); retired in this registry alone, destroy is refused.
      await expect(keyring.retire('1', { restoreWindowMs: 0, prove: nothingNeeded })).rejects.toThrow(
        "'1' of target 'orders': not retiring it",
      );
      expect((await registry.require('1')).state).toBe('decrypt_only');
      await inTransaction(db.pool, (client) => registry.retire('1', 0, client));
      await expect(keyring.destroy('1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow(RetireRefusedError);
      expect((await registry.require('1')).state).toBe('retired');
      keyring.close();
    });
  });

  it('EnvKeyProvider stays usable as a driver after a reload (a KEK added by another process)', async () => {
    const env: Record<string, string> = { TEST_KEK_v1: randomBytes(32).toString('base64url') };
    const provider = new EnvKeyProvider(env, 'TEST');
    const driver = provider;
    env.TEST_KEK_v2 = randomBytes(32).toString('base64url');
    await driver.reload();
    expect((await driver.list()).map((k) => k.kekId).sort()).toEqual(['v1', 'v2']);
    driver.close();
  });
});
