// Adversary of the keyring seam (issue 26) on a crash between the store's hook and the registry's commit. Keyring.destroy
// marks the KEK destroyed and calls the driver inside one transaction: when the worker dies (or PostgreSQL restarts)
// after KMS accepted ScheduleKeyDeletion but before the commit, the registry still says retired, and the retry must
// find the key already scheduled (the driver's contract: "a KEK already gone is destroyed"). Against moto and
// PostgreSQL.
import { describe, expect, it } from 'vitest';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { useMoto } from '../helpers/aws';
import { useTestDatabase } from '../helpers/database';
import {
  keyringFor,
  kmsRotated,
  nothingNeeded,
  RESTORES_AND_DESTRUCTIONS,
  TEST_KEYSPACE as KEYSPACE,
} from '../helpers/keyring';

describe('adversary: a destruction retried after its store hook ran and its registry write was lost', () => {
  const moto = useMoto();
  const db = useTestDatabase();

  it('AWS KMS: the retry of a destroy whose ScheduleKeyDeletion went through records the KEK destroyed (the key is already scheduled), instead of failing on the owner check of a key KMS no longer lists', async () => {
    const { env, store, registry } = await kmsRotated(db.pool, moto.server.env);
    const keyring = keyringFor(db.pool, store, KEYSPACE);
    await keyring.retire('v1', { restoreWindowMs: 0, prove: nothingNeeded });

    // The first attempt: the store's hook ran (the key is PendingDeletion), then the worker died before COMMIT.
    const lost = KmsKeys.fromEnv(env);
    await lost.reload();
    expect((await lost.destroy('v1', await registry.list())).destroyed).toBe(true);
    lost.close();
    expect((await registry.require('v1')).state).toBe('retired');

    // The retry, by a new worker.
    const retry = keyringFor(db.pool, KmsKeys.fromEnv(env), KEYSPACE);
    const step = await retry.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 });
    expect(step.outcome).toBe('destroyed');
    expect((await registry.require('v1')).state).toBe('destroyed');
    expect((await registry.events('v1', RESTORES_AND_DESTRUCTIONS)).map((e) => e.event)).toEqual(['destroyed']);
    retry.close();
    keyring.close();
  });
});
