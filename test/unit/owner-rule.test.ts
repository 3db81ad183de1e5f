import { describe, expect, it } from 'vitest';
import { type OwnerScope, refuseUnclaimed, storeScope, unclaimedKeys } from '../../src/keyring/owner-rule';
import { KeyStoreRefusedError } from '../../src/errors';

const perKey: OwnerScope = {
  recordPer: 'key',
  subject: (listed) => `the prefix holds ${listed} untagged`,
  mayBe: 'made by hand',
  ownKeys: 'a prefix of its own',
};
const oneRecord = storeScope("secret 'kv'", 'a secret of its own');
const a = { kekId: 'v1', fingerprint: 'fp-1' };
const b = { kekId: 'v2', fingerprint: 'fp-2' };

describe('the owner rule (one rule over {kekId, fingerprint} for every store other deployments reach)', () => {
  it('per key, every unowned key the registry does not record is refused; per store, one recorded key proves the store', () => {
    const registry = [{ kekId: 'v1', fingerprint: 'fp-1', state: 'active' as const }];
    expect(unclaimedKeys(perKey, [a, b], registry)).toEqual([b]);
    expect(unclaimedKeys(oneRecord, [a, b], registry)).toEqual([]);
    expect(unclaimedKeys(oneRecord, [b], registry)).toEqual([b]);
    expect(unclaimedKeys(oneRecord, [], [])).toEqual([]);
  });

  it('a key the registry records only as destroyed is not recorded: it is refused, not taken', () => {
    const registry = [{ kekId: 'v1', fingerprint: 'fp-1', state: 'destroyed' as const }];
    expect(unclaimedKeys(perKey, [a], registry)).toEqual([a]);
    expect(unclaimedKeys(oneRecord, [a], registry)).toEqual([a]);
  });

  it('the refusal names every key and the claim command: one per key, or one key naming the store', () => {
    const refusal = (scope: OwnerScope) => {
      try {
        refuseUnclaimed(scope, [a, b], [], 'db-1/rekey.tenant_deks');
      } catch (err) {
        expect(err).toBeInstanceOf(KeyStoreRefusedError);
        return (err as Error).message;
      }
      throw new Error('not refused');
    };
    const keyed = refusal(perKey);
    expect(keyed).toContain(
      "the prefix holds 'v1' (fp-1), 'v2' (fp-2) untagged, which the registry of keyspace db-1/rekey.tenant_deks does not record",
    );
    expect(keyed).toContain('rekey keys claim v1 --fingerprint fp-1; rekey keys claim v2 --fingerprint fp-2.');
    expect(keyed).toContain('If it is not, give this keyspace a prefix of its own');
    const stored = refusal(oneRecord);
    expect(stored).toContain("secret 'kv' has no owner record and holds KEK(s) 'v1' (fp-1), 'v2' (fp-2)");
    expect(stored).toContain("If the store is this keyspace's, claim it");
    expect(stored).toContain('rekey keys claim v2 --fingerprint fp-2. ');
    expect(stored).not.toContain('rekey keys claim v1');
  });
});
