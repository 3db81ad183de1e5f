import { describe, expect, it } from 'vitest';
import { MARK_REACH, mergeVerified, verifiedFails, type VerifiedUnder } from '../../src/rotation/verified-mark';

const proof = (mark: string, over: Partial<VerifiedUnder> = {}): VerifiedUnder => ({
  kekId: 'v2',
  fingerprint: 'arn:v2',
  mark,
  scope: '7/1/16384',
  ...over,
});

describe('verify’s proof reused by retire (verified-mark)', () => {
  it('parts of one check keep the oldest mark; a part without a proof, or of another key or database, leaves none', () => {
    expect(mergeVerified({ checked: 0 }, { verified: proof('100') })).toEqual(proof('100'));
    expect(mergeVerified({ checked: 10, verified: proof('100') }, { verified: proof('90') })).toEqual(proof('90'));
    expect(mergeVerified({ checked: 10, verified: proof('90') }, { verified: proof('100') })).toEqual(proof('90'));
    expect(mergeVerified({ checked: 10, verified: proof('90') }, {})).toBeNull();
    expect(mergeVerified({ checked: 10, verified: null }, { verified: proof('90') })).toBeNull();
    // Rows checked by a build that took no mark: nothing reusable, whatever later parts bring.
    expect(mergeVerified({ checked: 10 }, { verified: proof('90') })).toBeNull();
    expect(
      mergeVerified({ checked: 10, verified: proof('90') }, { verified: proof('95', { fingerprint: 'x' }) }),
    ).toBeNull();
    expect(
      mergeVerified({ checked: 10, verified: proof('90') }, { verified: proof('95', { scope: '7/2/16384' }) }),
    ).toBeNull();
  });

  it('a proof stands only for the same KEK and key, in the same cluster, timeline and database, with the id counter ahead of its mark by less than 2^30', () => {
    const active = { kekId: 'v2', fingerprint: 'arn:v2' };
    const now = { scope: '7/1/16384', next: '150' };
    expect(verifiedFails(proof('100'), active, now)).toBeUndefined();
    expect(verifiedFails(proof('100'), { kekId: 'v3', fingerprint: 'arn:v2' }, now)).toMatch(/active KEK is 'v3'/);
    expect(verifiedFails(proof('100'), { kekId: 'v2', fingerprint: 'arn:other' }, now)).toMatch(/fingerprint/);
    expect(verifiedFails(proof('100'), active, undefined)).toMatch(/does not say/);
    expect(verifiedFails(proof('100'), active, { ...now, scope: '8/1/16384' })).toMatch(/not the one verify read/);
    expect(verifiedFails(proof('100'), active, { ...now, next: '99' })).toMatch(/behind/);
    expect(verifiedFails(proof('100'), active, { ...now, next: String(100n + MARK_REACH) })).toMatch(/32-bit xmin/);
    expect(verifiedFails(proof('100'), active, { ...now, next: String(99n + MARK_REACH) })).toBeUndefined();
  });
});
