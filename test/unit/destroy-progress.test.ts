import { describe, expect, it } from 'vitest';
import { destroyRetryDelayMs } from '../../src/rotation/destroy-progress';

const HOUR = 3_600_000;

describe('a refused destruction tries again on a bounded schedule', () => {
  it('an hour after the first refusal, doubling, never longer than a day however often it is refused', () => {
    expect([1, 2, 3, 4, 5, 6].map(destroyRetryDelayMs)).toEqual([1, 2, 4, 8, 16, 24].map((h) => h * HOUR));
    expect(destroyRetryDelayMs(1_000)).toBe(24 * HOUR);
    expect(destroyRetryDelayMs(0)).toBe(HOUR);
  });
});
