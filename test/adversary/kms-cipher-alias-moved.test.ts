// Adversary of the DEK cipher (issue 26: "cipher(kekId) hands out a fingerprint-checked ... DEK cipher"). A KMS KEK's
// fingerprint is its key ARN, and the keyring checks it when it hands a cipher out; but the remote cipher's DEK
// operations (newDek, open, moveTo) give the driver the KEK's id alone, and the driver uses whatever key the alias
// `<prefix>kek-<id>` named at its last reload. Once the alias is pointed elsewhere (by hand, or by another deployment
// on the same prefix) and anything reloads the store, a cipher checked as v1's ARN makes DEKs under the other key:
// when its owner deletes it, those tenants' data is gone. Against moto and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { CreateKeyCommand, KMSClient, UpdateAliasCommand } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { KekRegistry } from '../../src/store/kek-registry';
import { useMoto } from '../helpers/aws';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { keyringFor } from '../helpers/keyring';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

const KEYSPACE = 'db-a/public.tenant_deks';

describe('adversary: a KMS cipher uses the key its fingerprint names, not the one its alias names now', () => {
  const moto = useMoto();
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  it("a v1 cipher handed out before v1's alias moved to another key makes no DEK under that key: its newDek is refused or made under v1's recorded ARN, and opens once the alias points back", async () => {
    const prefix = `alias/rekey-adversary/${randomUUID()}/`;
    const env = { ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix, REKEY_AWS_KMS_RATE: '0' };
    const store = KmsKeys.fromEnv(env);
    await generateKek(store, 'v1', { owner: KEYSPACE });
    const recordedArn = (await fingerprintIn(store, 'v1')).slice('kms:'.length);
    await new KekRegistry(db.pool, 'rekey').seedActive('v1', await fingerprintIn(store, 'v1'));
    const keyring = keyringFor(db.pool, store, KEYSPACE);
    const cipher = await keyring.cipher('v1');

    // The alias is pointed at another key (another deployment's, say), and the store is read again (any reload).
    const kms = new KMSClient(awsClientConfig(env, 'KMS'));
    const other = await kms.send(new CreateKeyCommand({ Description: 'not this keyspace’s KEK' }));
    await kms.send(new UpdateAliasCommand({ AliasName: `${prefix}kek-v1`, TargetKeyId: other.KeyMetadata!.KeyId }));
    await keyring.reload();

    const made = await cipher.newDek('tenant-1').catch(() => undefined);
    cipher.release();
    if (made !== undefined) {
      // The alias put back on the recorded key: the DEK the cipher made opens under it.
      await kms.send(new UpdateAliasCommand({ AliasName: `${prefix}kek-v1`, TargetKeyId: recordedArn }));
      await keyring.reload();
      const opened = await keyring.withCiphers(['v1'], ([v1]) => v1!.open('tenant-1', made.wrapped));
      expect(opened.equals(made.dek)).toBe(true);
      for (const buffer of [made.dek, opened]) buffer.fill(0);
    }
    kms.destroy();
    keyring.close();
  });
});
