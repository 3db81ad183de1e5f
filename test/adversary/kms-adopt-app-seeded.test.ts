// Adversary of the KMS owner rules (issue 26, branch gaps3: "a key is this keyspace's when its tag rekey:keyspace
// names it, or when the keyspace's registry recorded its ARN"). The registry of a keyspace met for the first time is
// seeded by the application before any rotation runs: TenantCrypto.start records the key `<prefix>current` names as
// the active KEK, untagged or not. A second deployment's application started on a shared alias prefix therefore records
// the first deployment's untagged KEK (made by an earlier `rekey keys generate`), and its first rotation's adopt finds
// that ARN recorded, tags the key as its own, rotates away from it and disables it. Against moto and PostgreSQL.
import { describe, expect, it } from 'vitest';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { TenantCrypto } from '../../src/tenant-crypto';
import { useMoto } from '../helpers/aws';
import { useTestDatabases } from '../helpers/database';
import { deploymentWithDek, firstRotation, keyringFor } from '../helpers/keyring';
import { kmsEnv } from '../helpers/store-env';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: a second deployment whose application started first on the same KMS alias prefix', () => {
  const moto = useMoto();
  const databases = useTestDatabases(2);

  it("the application's first start does not make another deployment's untagged KEK this keyspace's: the rotation after it neither tags nor disables that key, and B's DEK under v1 still opens", async () => {
    const [dbA, dbB] = [databases.db(0), databases.db(1)];
    const env = kmsEnv(moto.server.env, 'rekey-adversary');
    // Deployment B: its KEK made by an earlier `rekey keys generate` (no owner tag), its registry in database B.
    const storeB = KmsKeys.fromEnv(env);
    await generateKek(storeB, 'v1');
    const deploymentB = await deploymentWithDek(dbB.pool, storeB, 'v1');

    // Deployment A, same prefix, database A: its application starts first (as the operator's guide has it), then the
    // first rotation runs: adopt (its first step), provision v2, promote, retire v1.
    const storeA = KmsKeys.fromEnv(env);
    await storeA.reload();
    const app = new TenantCrypto({ db: dbA.pool, keys: storeA });
    await app.start().catch(() => undefined);
    await app.stop();
    const keyringA = keyringFor(dbA.pool, storeA, 'db-a/public.tenant_deks');
    await expect(firstRotation(keyringA, dbA.pool, storeA, false)).rejects.toThrow();

    await deploymentB.stillOpens();
    keyringA.close();
    storeB.close();
  });
});
