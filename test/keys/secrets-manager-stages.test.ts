import { describe, expect, it } from 'vitest';
import { stagesAfterPromotion, unlabelledByPromotion } from '../../src/keyring/drivers/aws-secrets-manager';

const versions = (entries: Record<string, string[]>) => new Map(Object.entries(entries));

describe('Secrets Manager stages after a promotion', () => {
  it('AWSCURRENT moves to the target, AWSPREVIOUS moves from wherever it was to the version AWSCURRENT left, AWSPENDING leaves the target', () => {
    const after = stagesAfterPromotion(
      versions({
        old: ['AWSPREVIOUS', 'rekey-kek-v1'],
        current: ['AWSCURRENT', 'rekey-kek-v2'],
        next: ['AWSPENDING', 'rekey-kek-v3'],
        foreign: ['app-label'],
      }),
      'next',
    );
    expect(Object.fromEntries(after)).toEqual({
      old: ['rekey-kek-v1'],
      current: ['rekey-kek-v2', 'AWSPREVIOUS'],
      next: ['rekey-kek-v3', 'AWSCURRENT'],
      foreign: ['app-label'],
    });
  });

  it('a promotion to the version already AWSCURRENT moves nothing but AWSPENDING', () => {
    const after = stagesAfterPromotion(
      versions({ a: ['AWSCURRENT', 'AWSPENDING', 'rekey-kek-v2'], b: ['AWSPREVIOUS'] }),
      'a',
    );
    expect(Object.fromEntries(after)).toEqual({ a: ['AWSCURRENT', 'rekey-kek-v2'], b: ['AWSPREVIOUS'] });
  });

  it('finding 3: a needed version whose only label is AWSCURRENT or AWSPREVIOUS is named as left without a rekey label; one carrying a rekey label, or not needed, is not', () => {
    // The first move: the hand-made AWSCURRENT keeps only AWSPREVIOUS.
    expect(
      unlabelledByPromotion(
        versions({ handMade: ['AWSCURRENT'], v2: ['AWSPENDING', 'rekey-kek-v2'] }),
        'v2',
        new Set(['handMade', 'v2']),
      ),
    ).toEqual(['handMade']);
    // The next move takes AWSPREVIOUS from it: no label at all.
    expect(
      unlabelledByPromotion(
        versions({ handMade: ['AWSPREVIOUS'], v2: ['AWSCURRENT', 'rekey-kek-v2'], v3: ['AWSPENDING', 'rekey-kek-v3'] }),
        'v3',
        new Set(['handMade', 'v2', 'v3']),
      ),
    ).toEqual(['handMade']);
    // Labelled first (what rekey does), nothing is left unlabelled; a version the registry does not need is not named.
    expect(
      unlabelledByPromotion(
        versions({ handMade: ['AWSCURRENT', 'rekey-kek-h'], v2: ['AWSPENDING', 'rekey-kek-v2'], old: ['AWSPREVIOUS'] }),
        'v2',
        new Set(['handMade', 'v2']),
      ),
    ).toEqual([]);
    expect(
      unlabelledByPromotion(
        versions({ retired: ['rekey-retired-v0', 'AWSPREVIOUS'], v2: ['AWSCURRENT'] }),
        'v2',
        new Set(['retired']),
      ),
    ).toEqual([]);
  });
});
