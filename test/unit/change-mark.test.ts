import { describe, expect, it } from 'vitest';
import { oldestRunning } from '../../src/store/target-store';

describe('oldestRunning (the change mark from the transaction ids of this database)', () => {
  it('is the next id when no transaction of this database is running', () => {
    expect(oldestRunning(5_000_000_123n, [])).toBe(5_000_000_123n);
  });

  it('is the oldest running id, read in the epoch before the next id, across a wraparound of the 32-bit id', () => {
    // next = epoch 2, low 100; a running id 4294967200 is of epoch 1 (196 ids before next).
    const next = 2n * 4294967296n + 100n;
    expect(oldestRunning(next, ['4294967200', '50'])).toBe(next - 196n);
  });

  it('an id assigned after the next id was read (at or after it) does not lower the mark', () => {
    const next = 7_000_000n;
    expect(oldestRunning(next, ['7000000', '7000005'])).toBe(next);
  });
});
