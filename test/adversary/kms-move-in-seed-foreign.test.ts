// Adversary of the owner rule at an application's first start (safety4: every store other deployments reach answers
// refuseSeed; a keyring file refuses a KEK it records as another keyspace's). A keyspace moving into AWS KMS
// (REKEY_AWS_KMS_LOCAL_KEYS=file) reads its KEKs from KMS and, until its rows have moved, from a keyring file: the
// move-in driver's refuseSeed asks KMS about a KMS key and nobody about a local one ("a local key as its store says",
// but the store is never asked). An application pointed at another deployment's keyring file therefore seeds its
// registry with that deployment's KEK, which the file records as the other keyspace's, and wraps its DEKs under it.
// Against moto, the keyring file and PostgreSQL.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KmsWithLocalKeys } from '../../src/keyring/drivers/kms-move-in';
import { KekRegistry } from '../../src/store/kek-registry';
import { useMoto } from '../helpers/aws';
import { useScratchDirectory, useTestDatabases } from '../helpers/database';
import { expectFirstStartRefused, keyringFileOwnedBy } from '../helpers/keyring';
import { kmsEnv } from '../helpers/store-env';

describe("adversary: an application's first start on AWS KMS with local KEKs moving in from another keyspace's keyring file", () => {
  const moto = useMoto();
  const databases = useTestDatabases(2);
  const scratch = useScratchDirectory('rekey-move-in-seed-');

  it("is refused (KeyspaceMismatchError naming keyspace B) before the registry is seeded with B's local KEK", async () => {
    const [dbA, dbB] = [databases.db(0), databases.db(1)];
    const file = path.join(scratch.dir, 'keyring.json');
    // Keyspace B's keyring file: v1, recorded as B's, current.
    const { keyspaceB, storeB } = await keyringFileOwnedBy(dbB.pool, file);
    expect(storeB.configuredCurrent).toBe('v1');
    await new KekRegistry(dbB.pool, 'rekey').seedActive('v1', (await storeB.list())[0]!.fingerprint);
    expect(await storeB.ownerOf('v1')).toBe(keyspaceB);

    // Keyspace A's application, moving into KMS, with B's file as its local keys.
    const env = kmsEnv(moto.server.env, 'rekey-adversary');
    const storeA = new KmsWithLocalKeys(KmsKeys.fromEnv(env), FileKeyring.open(file));
    await storeA.reload();
    await expectFirstStartRefused(dbA.pool, storeA, keyspaceB);
    storeA.close();
    storeB.close();
  });
});
