// Adversary of the application's first start (TenantCrypto.start seeds an empty registry from the store's current KEK;
// issue 26's owner rule "a key store belongs to one keyspace"). The keyring file records each KEK's owner, and the
// worker's keyring refuses to rotate with, retire or destroy a KEK the file records as another keyspace's. The
// application's seed asks the store's refuseSeed, which the keyring file answers at once: an application of keyspace A
// pointed at keyspace B's keyring file (a shared volume, a copied configuration) records B's KEK as A's active one and
// wraps A's DEKs under it. B's own rotation then retires and destroys that KEK, proving only B's rows (B's workers
// cannot see A's database), and every DEK of A is gone. Against PostgreSQL and the keyring file.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekRegistry } from '../../src/store/kek-registry';
import { useScratchDirectory, useTestDatabases } from '../helpers/database';
import { expectFirstStartRefused, keyringFileOwnedBy } from '../helpers/keyring';
import { fingerprintIn } from '../helpers/store-keys';

describe("adversary: an application's first start on a keyring file whose current KEK is another keyspace's", () => {
  const databases = useTestDatabases(2);
  const scratch = useScratchDirectory('rekey-seed-foreign-');

  it("is refused (KeyspaceMismatchError naming keyspace B) before the registry is seeded: keyspace A's application wraps nothing under B's KEK", async () => {
    const [dbA, dbB] = [databases.db(0), databases.db(1)];
    const file = path.join(scratch.dir, 'keyring.json');
    // Keyspace B's keyring file: its KEK v1, recorded as B's, current; B's registry has it active.
    const { keyspaceB, storeB } = await keyringFileOwnedBy(dbB.pool, file);
    const written = JSON.parse(fs.readFileSync(file, 'utf8')) as { current?: string; keks: { owner?: string }[] };
    expect(written.keks[0]?.owner).toBe(keyspaceB);
    fs.writeFileSync(file, JSON.stringify({ ...written, current: 'v1' }), { mode: 0o600 });
    await new KekRegistry(dbB.pool, 'rekey').seedActive('v1', await fingerprintIn(storeB, 'v1'));

    // Keyspace A's application, configured with the same file.
    const storeA = FileKeyring.open(file);
    await expectFirstStartRefused(dbA.pool, storeA, keyspaceB);
    storeA.close();
    storeB.close();
  });
});
