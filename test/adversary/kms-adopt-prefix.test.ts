// Adversary of the keyring seam (issue 26) on issue 24's finding 2 ("two deployments use the default prefix
// alias/rekey/"): provision refuses an alias prefix whose aliases the registry does not record, but a keyspace met for
// the first time records the key `<prefix>current` names (TenantCrypto and the rotation's validate seed the registry
// from it: src/tenant-crypto.ts, src/activities/kek.ts), and its first step, Keyring.adopt, tags every untagged key
// under the prefix as its own. Another deployment's KEK made by `rekey keys generate` (no owner tag) is then this
// keyspace's by both records: it provisions beside it, moves `current`, and disables it. Against moto and PostgreSQL.
import { describe, expect, it } from 'vitest';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { useMoto } from '../helpers/aws';
import { useTestDatabases } from '../helpers/database';
import { deploymentWithDek, firstRotation, keyringFor } from '../helpers/keyring';
import { kmsEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: a second deployment on the same KMS alias prefix', () => {
  const moto = useMoto();
  const databases = useTestDatabases(2);

  it("a keyspace does not adopt, rotate away from and disable another deployment's untagged KEK under the same alias prefix: B's DEK under v1 still opens", async () => {
    const [dbA, dbB] = [databases.db(0), databases.db(1)];
    const env = kmsEnv(moto.server.env, 'rekey-adversary');
    // Deployment B: its KEK made by `rekey keys generate` (no owner), its registry and its tenants in database B.
    const storeB = KmsKeys.fromEnv(env);
    await generateKek(storeB, 'v1');
    const deploymentB = await deploymentWithDek(dbB.pool, storeB, 'v1');

    // Deployment A, same prefix, database A, met for the first time: adopt (validate's first step), the registry
    // seeded from the store's current KEK (as TenantCrypto and validate do), then a rotation v1 → v2 that retires v1.
    const storeA = KmsKeys.fromEnv(env);
    await storeA.reload();
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    await expect(firstRotation(keyringA, dbA.pool, storeA, true)).rejects.toThrow();

    await deploymentB.stillOpens();
    keyringA.close();
    storeB.close();
  });
});
