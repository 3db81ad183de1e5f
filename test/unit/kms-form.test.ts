import { describe, expect, it, vi } from 'vitest';
import { REKEY_DEK_FORMAT } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { CallsStoppedError, CallWindow, RateSchedule, RequestPacer } from '../../src/crypto/request-pacer';
import { addCounters, emptyCounters, type RewrapCounters } from '../../src/rewrap/counters';
import { describeCounters } from '../../src/cli/format';
import { initialProgress, type ProgressReport } from '../../src/rotation/progress';
import { wrapDek } from '../../src/envelope/dek-wrapping';
import { FormatError, UnreadableValueError } from '../../src/errors';

const codec = compileFormat(REKEY_DEK_FORMAT);

describe("rekey's DEK format with its KMS form", () => {
  const kmsRow = { tenant_id: 't1', wrapped_dek: Buffer.concat([Buffer.from([0x02]), Buffer.alloc(180, 7)]) };
  const localRow = { tenant_id: 't1', wrapped_dek: wrapDek(Buffer.alloc(32, 1), 'v1', 't1', Buffer.alloc(32, 2)) };

  it('tells the two forms apart by their format byte, and reads both', () => {
    expect(codec.kms!.is(kmsRow)).toBe(true);
    expect(codec.kms!.is(localRow)).toBe(false);
    expect(codec.check(kmsRow)).toBeUndefined();
    expect(codec.check(localRow)).toBeUndefined();
    expect(codec.kms!.blob(kmsRow)).toEqual(Buffer.alloc(180, 7));
    expect(codec.kms!.value(Buffer.alloc(3, 9))).toEqual(Buffer.from([2, 9, 9, 9]));
  });

  it('binds the tenant and the KEK id in the encryption context', () => {
    expect(codec.kms!.context(kmsRow, 'v2')).toEqual({ 'rekey:tenant': 't1', 'rekey:kek': 'v2' });
    expect(() => codec.kms!.context({ tenant_id: null }, 'v2')).toThrow(UnreadableValueError);
  });

  it('a KMS value is never opened with key bytes, and a local value is not a KMS blob', () => {
    expect(() => codec.open(Buffer.alloc(32, 1), kmsRow, 'v1')).toThrow(/wrapped by AWS KMS/);
    expect(() => codec.kms!.blob(localRow)).toThrow(/not a KMS ciphertext/);
    const tooLong = { tenant_id: 't1', wrapped_dek: Buffer.concat([Buffer.from([0x02]), Buffer.alloc(6145)]) };
    expect(codec.check(tooLong)).toMatch(/too long for KMS/);
  });

  it('refuses a KMS form it could not tell apart or bind', () => {
    const clash = { ...REKEY_DEK_FORMAT, kms: { prefix: '01', context: { 'rekey:tenant': 'tenant_id' } } };
    expect(() => compileFormat(clash)).toThrow(/must differ from value.prefix/);
    expect(() => compileFormat({ ...REKEY_DEK_FORMAT, kms: { prefix: '02', context: {} } })).toThrow(FormatError);
    expect(() => compileFormat({ ...REKEY_DEK_FORMAT, kms: { prefix: '0', context: { a: 'tenant_id' } } })).toThrow(
      /hex bytes/,
    );
  });
});

describe('pacing of key store calls', () => {
  it('spaces calls 1/rate apart, never in the past, and lets a call through at once after an idle spell', () => {
    const schedule = new RateSchedule(100); // 10 ms apart
    expect([0, 0, 0, 0].map(() => schedule.delay(1_000))).toEqual([0, 10, 20, 30]);
    expect(schedule.delay(1_035)).toBe(5);
    expect(schedule.delay(5_000)).toBe(0);
    expect(schedule.delay(5_000)).toBe(10);
    expect(new RateSchedule(0).delay(1)).toBe(0);
  });

  it('runs at most `concurrency` calls at once and keeps results in order', async () => {
    const pacer = new RequestPacer({ concurrency: 3, ratePerSecond: 0 });
    let running = 0;
    let most = 0;
    const results = await pacer.map([...Array(20).keys()], async (n) => {
      running++;
      most = Math.max(most, running);
      await new Promise((resolve) => setImmediate(resolve));
      running--;
      return n * 2;
    });
    expect(results).toEqual([...Array(20).keys()].map((n) => n * 2));
    expect(most).toBe(3);
  });

  it('stops taking items after a failure and rejects with it', async () => {
    const pacer = new RequestPacer({ concurrency: 2, ratePerSecond: 0 });
    const started: number[] = [];
    await expect(
      pacer.map([...Array(50).keys()], async (n) => {
        started.push(n);
        await new Promise((resolve) => setImmediate(resolve));
        if (n === 3) throw new Error('AccessDenied');
        return n;
      }),
    ).rejects.toThrow('AccessDenied');
    expect(started.length).toBeLessThan(10);
  });

  it('a lane still waiting its turn when another lane fails does not start its item', async () => {
    vi.useFakeTimers();
    try {
      const pacer = new RequestPacer({ concurrency: 2, ratePerSecond: 50 }); // 20 ms apart
      const started: number[] = [];
      const mapped = pacer.map([0, 1, 2], (n) => {
        started.push(n);
        return n === 0 ? Promise.reject(new Error('AccessDenied')) : Promise.resolve(n);
      });
      const rejected = expect(mapped).rejects.toThrow('AccessDenied');
      await vi.advanceTimersByTimeAsync(100); // past the second lane's turn
      await rejected;
      expect(started).toEqual([0]);
    } finally {
      vi.useRealTimers();
    }
  });

  /** A call that answers when the test says so. */
  const held = () => {
    let answer!: () => void;
    const promise = new Promise<void>((resolve) => (answer = resolve));
    return { promise, answer };
  };

  it('a failed batch rejects only once its calls in flight have answered: nothing of it is left running', async () => {
    const pacer = new RequestPacer({ concurrency: 2, ratePerSecond: 0 });
    const slow = held();
    let answered = false;
    let settled = false;
    const mapped = pacer
      .map([0, 1], async (n) => {
        if (n === 1) throw new Error('AccessDenied');
        await slow.promise;
        answered = true;
        return n;
      })
      .finally(() => (settled = true));
    await new Promise((resolve) => setImmediate(resolve));
    expect(settled).toBe(false);
    slow.answer();
    await expect(mapped).rejects.toThrow('AccessDenied');
    expect(answered).toBe(true);
  });

  it('batches sharing a call window: a slow call of the first holds one slot, the next batch runs its calls in the others, never more in flight than the window', async () => {
    const pacer = new RequestPacer({ concurrency: 3, ratePerSecond: 0 });
    const window = pacer.window();
    let running = 0;
    let most = 0;
    const slow = held();
    const call = (batch: string) => async (n: number) => {
      running++;
      most = Math.max(most, running);
      if (batch === 'first' && n === 0) await slow.promise;
      else await new Promise((resolve) => setImmediate(resolve));
      running--;
      return `${batch}-${n}`;
    };
    const first = pacer.mapIn(window, [0, 1, 2, 3, 4], call('first'));
    const second = pacer.mapIn(window, [0, 1, 2, 3, 4, 5, 6], call('second'));
    // The second batch completes while the first one's call 0 has not answered.
    expect(await second).toEqual([0, 1, 2, 3, 4, 5, 6].map((n) => `second-${n}`));
    expect(window.calls).toBe(1);
    slow.answer();
    expect(await first).toEqual([0, 1, 2, 3, 4].map((n) => `first-${n}`));
    expect(most).toBe(3);
    expect(window.calls).toBe(0);
  });

  it('a closed window starts no call again: a batch with calls not started rejects with CallsStoppedError once those in flight answered, a batch whose calls all started completes', async () => {
    const pacer = new RequestPacer({ concurrency: 2, ratePerSecond: 0 });
    const window = pacer.window();
    const slow = held();
    const started: string[] = [];
    const call = (batch: string) => async (n: number) => {
      started.push(`${batch}-${n}`);
      await slow.promise;
      return n;
    };
    const whole = pacer.mapIn(window, [0], call('whole'));
    const cut = pacer.mapIn(window, [0, 1, 2], call('cut'));
    await new Promise((resolve) => setImmediate(resolve));
    expect(started).toEqual(['whole-0', 'cut-0']);
    window.close();
    expect(await window.acquire()).toBe(false);
    slow.answer();
    expect(await whole).toEqual([0]);
    await expect(cut).rejects.toThrow(CallsStoppedError);
    expect(started).toEqual(['whole-0', 'cut-0']);
    expect(window.calls).toBe(0);
    expect(() => new CallWindow(0)).toThrow(RangeError);
  });

  it('counts key store calls in the progress only where there were any', () => {
    expect(addCounters(emptyCounters(), emptyCounters())).not.toHaveProperty('keyStoreRequests');
    const kms = { ...emptyCounters(), keyStoreRequests: 4 };
    expect(addCounters(addCounters(emptyCounters(), kms), kms).keyStoreRequests).toBe(8);
    // The CLI's counters line names them only then.
    const progress = (counters: RewrapCounters) =>
      describeCounters({ ...initialProgress('v1', 'v2', false, 0), counters } as ProgressReport);
    expect(progress(kms)).toMatch(/ {2}Key store requests: 4$/);
    expect(progress(emptyCounters())).not.toContain('Key store requests');
  });
});
