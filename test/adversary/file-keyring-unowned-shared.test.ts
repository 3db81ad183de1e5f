// Adversary of the keyring file's owner records (REKEY_KEYRING_FILE, src/keyring/drivers/file.ts) shared by two
// deployments on different databases: two keyspaces whose registries cannot see each other. `rekey keys generate`
// makes a KEK with no owner; each application's first start seeds its registry from the file's current KEK; the first
// rotation's first step (adopt) then recorded as its keyspace the owner of every KEK without one. Deployment B (a
// staging copy given production's keyring volume) thereby took A's v1 as its own, rotated away from it, retired it and
// destroyed it (removed from the file), proving only B's rows: every DEK of A under v1 was lost. Against PostgreSQL and
// the keyring file.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { generateKek } from '../../src/keyring/keyring';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantCrypto } from '../../src/tenant-crypto';
import { KeyspaceMismatchError, KeyStoreRefusedError } from '../../src/errors';
import { runRekey } from '../helpers/cli';
import { useScratchDirectory, useTestDatabases } from '../helpers/database';
import { keyringFor, nothingNeeded } from '../helpers/keyring';
import { keyspaceIn } from '../helpers/keyspace';
import { fingerprintIn } from '../helpers/store-keys';

describe('adversary: one keyring file shared by two deployments on different databases, its KEK made with no owner', () => {
  const databases = useTestDatabases(8);
  const scratch = useScratchDirectory('rekey-file-unowned-');

  /** Deployment A (database `index`): v1 made by `rekey keys generate` (no owner), A's application started first and wrote a record. */
  async function deploymentA(file: string, index: number) {
    const maker = FileKeyring.open(file, { create: true });
    await generateKek(maker, 'v1');
    maker.close();
    const db = databases.db(index).pool;
    const keys = FileKeyring.open(file);
    const app = new TenantCrypto({ db, keys, dekCacheTtlMs: 0 });
    await app.start();
    const sealed = await app.encrypt('a-tenant', 'record of deployment A');
    await app.stop();
    keys.close();
    return {
      keyspace: (await keyspaceIn(db)).id,
      /** A's record still opens, read by a fresh process of A over the file as it is now. */
      async stillOpens() {
        const fresh = FileKeyring.open(file);
        const reader = new TenantCrypto({ db, keys: fresh, dekCacheTtlMs: 0 });
        try {
          await reader.start();
          expect((await reader.decrypt('a-tenant', sealed)).toString()).toBe('record of deployment A');
        } finally {
          await reader.stop();
          fresh.close();
        }
      },
    };
  }

  it("Finding 1: B's application's first start on the file is refused (KeyspaceMismatchError naming A): B's registry stays empty and A's record still opens", async () => {
    const file = path.join(scratch.dir, 'seed.json');
    const a = await deploymentA(file, 0);
    const dbB = databases.db(1).pool;
    const keysB = FileKeyring.open(file);
    const appB = new TenantCrypto({ db: dbB, keys: keysB, dekCacheTtlMs: 0 });
    const started = appB.start();
    await expect(started).rejects.toThrow(KeyspaceMismatchError);
    await expect(started).rejects.toThrow(a.keyspace);
    await appB.stop();
    keysB.close();
    expect(await new KekRegistry(dbB, 'rekey').list()).toEqual([]);
    await a.stillOpens();
  });

  it("Finding 1: B's rotation with a registry that records A's v1 (seeded as an older build's application did) neither takes v1 nor retires nor destroys it, and A's record still opens", async () => {
    const file = path.join(scratch.dir, 'rotate.json');
    const a = await deploymentA(file, 2);
    const dbB = databases.db(3).pool;
    const storeB = FileKeyring.open(file);
    const registryB = new KekRegistry(dbB, 'rekey');
    await registryB.seedActive('v1', await fingerprintIn(storeB, 'v1'));
    const keyringB = keyringFor(dbB, storeB, (await keyspaceIn(dbB)).id);

    // B's rotation v1 → new, as a run takes it: adopt (its first step), provision, promote, retire with a window of 0,
    // then the destruction. Each step that would act on v1 is refused; the registry of B says what happened.
    await keyringB.adopt();
    await expect(keyringB.refuseForeign('v1', 'rotating with')).rejects.toThrow(KeyspaceMismatchError);
    await keyringB.provision('v2', { generate: true });
    await keyringB.promote('v1', 'v2');
    const retired = keyringB.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded });
    await expect(retired).rejects.toThrow(KeyspaceMismatchError);
    await expect(retired).rejects.toThrow(a.keyspace);
    expect((await registryB.require('v1')).state).toBe('decrypt_only');
    storeB.close();
    await a.stillOpens();
  });

  it("Finding 1: an application that cannot record its keyspace in the file (the file's directory not writable for it) does not seed from an unowned KEK: refused with rekey keys claim, which (the built CLI) records the keyspace, and another keyspace's claim is refused (exit 5)", async () => {
    const file = path.join(scratch.dir, 'claim.json');
    const maker = FileKeyring.open(file, { create: true });
    const { fingerprint } = await generateKek(maker, 'v1');
    maker.close();
    const [dbA, dbB] = [databases.db(4), databases.db(5)];
    const keyspaceA = (await keyspaceIn(dbA.pool)).id;
    // Another process holds the file's lock for longer than a writer waits: this process cannot write the file (as an
    // application whose mount is read-only cannot; the test runs as root, whom a read-only mode does not stop).
    fs.writeFileSync(`${file}.lock`, 'another process', { mode: 0o600 });
    const keys = FileKeyring.open(file);
    const app = new TenantCrypto({ db: dbA.pool, keys, dekCacheTtlMs: 0 });
    const started = app.start();
    await expect(started).rejects.toThrow(KeyStoreRefusedError);
    await expect(started).rejects.toThrow(`rekey keys claim v1 --fingerprint ${fingerprint}`);
    await app.stop();
    expect(await new KekRegistry(dbA.pool, 'rekey').list()).toEqual([]);
    fs.rmSync(`${file}.lock`);

    const cli = (url: string) => ({ PATH: process.env.PATH, DATABASE_URL: url, REKEY_KEYRING_FILE: file });
    const claimed = await runRekey(['keys', 'claim', 'v1', '--fingerprint', fingerprint], cli(dbA.url));
    expect(claimed.code, claimed.stderr).toBe(0);
    expect(await keys.ownerOf('v1')).toBe(keyspaceA);
    const foreign = await runRekey(['keys', 'claim', 'v1', '--fingerprint', fingerprint], cli(dbB.url));
    expect(foreign.code).toBe(5);
    expect(foreign.stderr).toContain(`records keyspace ${keyspaceA} as its owner`);

    const again = new TenantCrypto({ db: dbA.pool, keys, dekCacheTtlMs: 0 });
    await again.start();
    await again.stop();
    expect((await new KekRegistry(dbA.pool, 'rekey').require('v1')).fingerprint).toBe(fingerprint);
    keys.close();
  });

  it("Finding 2: KEKs A's registry recorded from the environment, moved into a keyring file B is given (rekey keys import), are taken by neither B's first start nor B's rotation: refused with rekey keys claim, and A's record still opens", async () => {
    const file = path.join(scratch.dir, 'import.json');
    const [dbA, dbB] = [databases.db(6), databases.db(7)];
    // Deployment A on the environment: its application seeded v1 and wrote a record under it.
    const env = { REKEY_CURRENT_KEK_ID: 'v1', REKEY_KEK_v1: randomBytes(32).toString('base64url') };
    const envKeys = new EnvKeyProvider(env);
    const appA = new TenantCrypto({ db: dbA.pool, keys: envKeys, dekCacheTtlMs: 0 });
    await appA.start();
    const sealed = await appA.encrypt('a-tenant', 'record of deployment A');
    await appA.stop();
    envKeys.close();
    // A's operator moves the KEKs into the keyring file (docs/06), with the built CLI.
    const imported = await runRekey(['keys', 'import', '--keyring', file], { PATH: process.env.PATH, ...env });
    expect(imported.code, imported.stderr).toBe(0);

    // Deployment B, another database, given the same file.
    const keysB = FileKeyring.open(file);
    const appB = new TenantCrypto({ db: dbB.pool, keys: keysB, dekCacheTtlMs: 0 });
    const started = appB.start();
    await expect(started).rejects.toThrow(KeyStoreRefusedError);
    await expect(started).rejects.toThrow(`rekey keys claim v1 --fingerprint ${await fingerprintIn(keysB, 'v1')}`);
    await appB.stop();
    // B's rotation's first step (adopt) does not take it either: B's registry records none of its keys.
    await keyringFor(dbB.pool, keysB, (await keyspaceIn(dbB.pool)).id).adopt();
    expect(await keysB.ownerOf('v1')).toBeUndefined();
    // A's own rotation takes it (A's registry records v1): B's first start is then refused as another keyspace's.
    const keysA = FileKeyring.open(file);
    await keyringFor(dbA.pool, keysA, (await keyspaceIn(dbA.pool)).id).adopt();
    expect(await keysA.ownerOf('v1')).toBe((await keyspaceIn(dbA.pool)).id);
    await expect(new TenantCrypto({ db: dbB.pool, keys: keysB, dekCacheTtlMs: 0 }).start()).rejects.toThrow(
      KeyspaceMismatchError,
    );
    const reader = new TenantCrypto({ db: dbA.pool, keys: keysA, dekCacheTtlMs: 0 });
    await reader.start();
    expect((await reader.decrypt('a-tenant', sealed)).toString()).toBe('record of deployment A');
    await reader.stop();
    keysA.close();
    keysB.close();
  });
});
