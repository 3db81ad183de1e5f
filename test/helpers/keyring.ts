import fs from 'node:fs';
import type { Pool, PoolClient } from 'pg';
import { expect } from 'vitest';
import type { StoreDriver } from '../../src/keyring/driver';
import type { RemoteKeysDriver } from '../../src/keyring/remote-keys';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { Keyring, generateKek } from '../../src/keyring/keyring';
import { emptyProof } from '../../src/rotation/label-proof';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry, registryHolders } from '../../src/store/kek-registry';
import { TenantCrypto } from '../../src/tenant-crypto';
import { DekUnwrapError, KeyspaceMismatchError, RetireRefusedError } from '../../src/errors';
import { keyspaceIn } from './keyspace';
import { kmsEnv } from './store-env';
import { fingerprintIn } from './store-keys';

/**
 * A keyring over `provider` for keyspace `keyspace` (target `target`'s registry in `db`). The other-registries check
 * is the database's own: every registry row of another target, or of another KEK id, with the same fingerprint.
 */
export function keyringFor(db: Pool, provider: StoreDriver, keyspace: string, target = 'rekey'): Keyring {
  return new Keyring({
    driver: provider,
    db,
    registry: new KekRegistry(db, target),
    keyspace,
    target,
    otherRegistries: async (kekId, fingerprint, action) => {
      const others = (await registryHolders(db, fingerprint)).filter(
        (holder) => holder.target !== target || holder.kekId !== kekId,
      );
      if (others.length > 0) {
        throw new RetireRefusedError(
          `KEK '${kekId}' (${fingerprint}) is still in another registry as ${others.map((o) => `'${o.kekId}' of target '${o.target}'`).join(', ')}: not ${action} it`,
        );
      }
      return 'rekey checked the registries of this database';
    },
  });
}

/** A proof that found every row under a usable KEK (nothing labelled with the KEK needs it). */
export const nothingNeeded = (): Promise<ReturnType<typeof emptyProof>> => Promise.resolve(emptyProof());

/** The registry of `target` as a rotation v1 → v2 leaves it: v2 active (registered with `fingerprints.v2`), v1 decrypt-only. */
export async function rotatedRegistry(
  db: Pool,
  target: string,
  fingerprints: { v1: string; v2: string },
): Promise<KekRegistry> {
  const registry = new KekRegistry(db, target);
  await registry.seedActive('v1', fingerprints.v1);
  await registry.register('v2', fingerprints.v2);
  await registry.promote('v1', 'v2');
  return registry;
}

/** v1 retired with a window that has ended already. */
export async function retiredWindowEnded(db: Pool, registry: KekRegistry): Promise<void> {
  await inTransaction(db, (client: PoolClient) => registry.retire('v1', 0, client));
}

/**
 * A keyring of another keyspace than the one its store records for v1 refuses to retire and to destroy v1, naming both
 * keyspaces, and writes nothing: the registry row stays as it was.
 */
export async function expectForeignRefused(
  db: Pool,
  keyring: Keyring,
  registry: KekRegistry,
  owner: string,
): Promise<void> {
  await expect(keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded })).rejects.toThrow(
    KeyspaceMismatchError,
  );
  await expect(keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded })).rejects.toThrow(
    `records it as keyspace ${owner}'s, and target 'rekey' is keyspace ${keyring.keyspace}`,
  );
  expect((await registry.require('v1')).state).toBe('decrypt_only');
  await retiredWindowEnded(db, registry);
  await expect(keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow(KeyspaceMismatchError);
  expect((await registry.require('v1')).state).toBe('retired');
}

/** `rotatedRegistry` for a store that holds v1 and v2. */
export const rotatedOn = async (db: Pool, store: StoreDriver): Promise<KekRegistry> =>
  rotatedRegistry(db, 'rekey', { v1: await fingerprintIn(store, 'v1'), v2: await fingerprintIn(store, 'v2') });

/**
 * For a store that records no owner: with another keyspace's registry (target `orders`) holding v1's key, the keyring
 * refuses to retire v1 (the store's retire would stop it for orders too) and, with v1 retired in this registry alone,
 * refuses to destroy it, naming that registry, and the registry keeps v1 retired.
 */
export async function expectDestroyRefusedWhileOthersHold(
  db: Pool,
  keyring: Keyring,
  registry: KekRegistry,
): Promise<void> {
  await new KekRegistry(db, 'orders').seedActive('v1', (await registry.require('v1')).fingerprint);
  await expect(keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded })).rejects.toThrow('not retiring it');
  expect((await registry.require('v1')).state).toBe('decrypt_only');
  await retiredWindowEnded(db, registry);
  await expect(keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow(RetireRefusedError);
  await expect(keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow(
    "'v1' of target 'orders'",
  );
  expect((await registry.require('v1')).state).toBe('retired');
}

/**
 * The ciphers of v1 and v2 of a remote store: v1 passes its self-test, a new DEK under v1 opens again, moves to v2
 * inside the store and opens there, bound to its tenant. The caller releases them and zeroizes `dek`.
 */
export async function expectRemoteRoundTrip(keyring: Keyring) {
  const [v1, v2] = [await keyring.cipher('v1'), await keyring.cipher('v2')];
  await v1.selfTest();
  const { dek, wrapped } = await v1.newDek('tenant-1');
  expect((await v1.open('tenant-1', wrapped)).equals(dek)).toBe(true);
  const moved = await v1.moveTo(v2, 'tenant-1', wrapped);
  expect((await v2.open('tenant-1', moved)).equals(dek)).toBe(true);
  // Bound to its tenant: another tenant's context opens nothing.
  await expect(v2.open('tenant-2', moved)).rejects.toThrow(DekUnwrapError);
  return { v1, v2, dek, wrapped };
}

/** The audit events of the operator's restores and of destructions (a KEK's trail also holds each rotation step's). */
export const RESTORES_AND_DESTRUCTIONS = ['restored', 'destroyed'] as const;

/** The keyspace the keyring tests' registry (target rekey) is. */
export const TEST_KEYSPACE = 'db-a/public.tenant_deks';

/**
 * With target `orders` of the same database holding v1 active and a tenant of orders with a DEK under v1 (made through
 * `orders`, its own view of the store), the keyring of TEST_KEYSPACE refuses to retire v1; orders' DEK still opens
 * and v1 stays decrypt-only in this registry. `store` holds v1 and v2, rotated v1 → v2 (`rotatedOn`).
 */
export async function expectRetireRefusedWhileOrdersHoldsV1(
  db: Pool,
  store: StoreDriver,
  registry: KekRegistry,
  orders: RemoteKeysDriver,
): Promise<void> {
  await new KekRegistry(db, 'orders').seedActive('v1', (await registry.require('v1')).fingerprint);
  await orders.reload();
  const { dek, wrapped } = await orders.newDek('v1', 'orders-tenant');

  const keyring = keyringFor(db, store, TEST_KEYSPACE);
  await expect(keyring.retire('v1', { restoreWindowMs: 60_000, prove: nothingNeeded })).rejects.toThrow(
    RetireRefusedError,
  );

  await orders.reload();
  const opened = await orders.unwrapDek('v1', 'orders-tenant', wrapped);
  expect(opened.equals(dek)).toBe(true);
  expect((await registry.require('v1')).state).toBe('decrypt_only');
  for (const buffer of [dek, opened]) buffer.fill(0);
}

/**
 * AWS KMS on moto (`motoEnv`) under a fresh alias prefix, unpaced: the environment a store of it is opened from, and
 * one holding v1 and v2, both owned by TEST_KEYSPACE, in a registry rotated v1 → v2.
 */
export async function kmsRotated(
  db: Pool,
  motoEnv: Record<string, string>,
): Promise<{ env: NodeJS.ProcessEnv; store: KmsKeys; registry: KekRegistry }> {
  const env = kmsEnv(motoEnv, 'rekey-adversary');
  const store = KmsKeys.fromEnv(env);
  await generateKek(store, 'v1', { owner: TEST_KEYSPACE });
  await generateKek(store, 'v2', { owner: TEST_KEYSPACE });
  return { env, store, registry: await rotatedOn(db, store) };
}

/** The tenant whose DEK deployment B of an adversary test wraps. */
const B_TENANT = 'b-tenant';

/**
 * Deployment B of the adversary tests, whose key another deployment (A) meets in the same store: B's registry in `db`
 * holds `kekId` active (the store's fingerprint), and a DEK for B's tenant is wrapped under it, by the store itself or
 * through B's keyring (`dekThroughKeyring`, for a store that hands out key bytes). With `keyspace`, B has a keyring of
 * that keyspace, whose first step (adopt) has run when `adopt` says so. `stillOpens` reads the store afresh and proves
 * the DEK opens to the same bytes (zeroized afterwards): what every adversary test checks at its end.
 */
export async function deploymentWithDek(
  db: Pool,
  store: StoreDriver,
  kekId: string,
  options: { keyspace?: string; adopt?: boolean; dekThroughKeyring?: boolean } = {},
): Promise<{ keyring: Keyring | undefined; stillOpens(): Promise<void> }> {
  await new KekRegistry(db, 'rekey').seedActive(kekId, await fingerprintIn(store, kekId));
  const keyring = options.keyspace === undefined ? undefined : keyringFor(db, store, options.keyspace);
  if (options.adopt) await keyring!.adopt();
  const remote = store as unknown as RemoteKeysDriver;
  const { dek, wrapped } = options.dekThroughKeyring
    ? await keyring!.withCiphers([kekId], ([kek]) => kek!.newDek(B_TENANT))
    : await remote.newDek(kekId, B_TENANT);
  return {
    keyring,
    async stillOpens() {
      await store.reload();
      const opened = options.dekThroughKeyring
        ? await keyring!.withCiphers([kekId], ([kek]) => kek!.open(B_TENANT, wrapped))
        : await remote.unwrapDek(kekId, B_TENANT, wrapped);
      expect(opened.equals(dek)).toBe(true);
      for (const buffer of [dek, opened]) buffer.fill(0);
    },
  };
}

/**
 * Keyspace A's first rotation on a store another deployment uses, as a run takes it: adopt (its first step); with
 * `seedRegistry`, the registry of `db` seeded from the store's current KEK (as TenantCrypto and validate do); a new
 * KEK `v2` provisioned and promoted; the old one retired.
 */
export async function firstRotation(
  keyring: Keyring,
  db: Pool,
  store: StoreDriver,
  seedRegistry: boolean,
): Promise<void> {
  await keyring.adopt();
  const from = (await keyring.configuredCurrent())!;
  if (seedRegistry) await new KekRegistry(db, 'rekey').seedActive(from, await fingerprintIn(store, from));
  await keyring.provision('v2', { generate: true });
  await keyring.promote(from, 'v2');
  await keyring.retire(from, { restoreWindowMs: 60_000, prove: nothingNeeded });
}

/** Keyspace B's keyring file at `file`, new: v1 made there with B (the keyspace of `dbB`) recorded as its owner. */
export async function keyringFileOwnedBy(dbB: Pool, file: string): Promise<{ keyspaceB: string; storeB: FileKeyring }> {
  const keyspaceB = (await keyspaceIn(dbB)).id;
  const storeB = FileKeyring.open(file, { create: true });
  await generateKek(storeB, 'v1', { owner: keyspaceB });
  return { keyspaceB, storeB };
}

/**
 * Keyspace A's application (its database `dbA`) first started over `keys`, whose current KEK is keyspace B's: the
 * start is refused with KeyspaceMismatchError naming B, and A's registry is still empty (nothing seeded).
 */
export async function expectFirstStartRefused(dbA: Pool, keys: StoreDriver, keyspaceB: string): Promise<void> {
  const app = new TenantCrypto({ db: dbA, keys, dekCacheTtlMs: 0 });
  const started = app.start();
  await expect(started).rejects.toThrow(KeyspaceMismatchError);
  await expect(started).rejects.toThrow(keyspaceB);
  await app.stop();

  expect(await new KekRegistry(dbA, 'rekey').list()).toEqual([]);
}

/**
 * Writes a keyring file as an operator's tooling would (format rekey-keyring/v1, keys in base64url, mode 0600),
 * spelled out here rather than through FileKeyring, so a test's fixture does not depend on the code it tests.
 */
export function writeKeyringFile(file: string, current: string, keks: Record<string, Buffer>): void {
  const createdAt = new Date().toISOString();
  fs.writeFileSync(
    file,
    JSON.stringify({
      format: 'rekey-keyring/v1',
      current,
      keks: Object.entries(keks).map(([id, key]) => ({ id, key: key.toString('base64url'), createdAt })),
    }),
    { mode: 0o600 },
  );
}
