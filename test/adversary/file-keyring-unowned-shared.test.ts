// Adversary of the keyring file's owner records (REKEY_KEYRING_FILE, src/keyring/drivers/file.ts) shared by two
// deployments on different databases: two keyspaces whose registries cannot see each other. `rekey keys generate`
// makes a KEK with no owner; each application's first start seeds its registry from the file's current KEK; the first
// rotation's first step (adopt) then recorded as its keyspace the owner of every KEK without one. Deployment B (a
// staging copy given production's keyring volume) thereby took A's v1 as its own, rotated away from it, retired it and
// destroyed it (removed from the file), proving only B's rows: every DEK of A under v1 was lost. Against PostgreSQL and
// the keyring file.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
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
  const databases = useTestDatabases(6);
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
});
