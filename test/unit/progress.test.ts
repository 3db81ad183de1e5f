import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../src/rotation/durations';
import {
  addSliceResult,
  enterPhase,
  etaSeconds,
  initialProgress,
  MAX_FAILED_TENANTS,
  percentComplete,
  report,
  rewrapRate,
  setPaused,
} from '../../src/rotation/progress';
import { rangesFromBoundaries } from '../../src/rotation/slices';
import { emptyCounters } from '../../src/rewrap/counters';

const t0 = 1_000_000;

function rewrapping(rewrapped: number, staleAtStart = 1_000) {
  let p = initialProgress('v1', 'v2', false, t0);
  p = enterPhase(p, 'rewrap', t0);
  p = { ...p, staleAtStart };
  return addSliceResult(p, { ...emptyCounters(), rewrapped }, []);
}

describe('progress math', () => {
  it('percent is rows moved over what was stale at the start, 100 once verified, and 0 for a run that moved nothing', () => {
    expect(percentComplete(rewrapping(0))).toBe(0);
    expect(percentComplete(rewrapping(412))).toBe(41.2);
    expect(percentComplete(rewrapping(1_000))).toBe(100);
    // Relabelled rows (labelled `from`, already under `to`) have moved off `from` too.
    const relabelled = addSliceResult(rewrapping(400), { ...emptyCounters(), relabelled: 100 }, []);
    expect(percentComplete(relabelled)).toBe(50);
    expect(percentComplete(enterPhase(rewrapping(10), 'grace', t0))).toBe(100);
    // Nothing to move: 100 once the rewrap is over, 0 before it has looked.
    expect(percentComplete(rewrapping(0, 0))).toBe(0);
    expect(percentComplete(enterPhase(rewrapping(0, 0), 'verify', t0))).toBe(100);
    // Aborted: what it moved, whatever phase it ended in.
    const abortedEarly = {
      ...enterPhase(initialProgress('v1', 'v2', false, t0), 'done', t0),
      outcome: 'aborted' as const,
    };
    expect(percentComplete(abortedEarly)).toBe(0);
    const abortedMidway = { ...enterPhase(rewrapping(250), 'done', t0), outcome: 'aborted' as const };
    expect(percentComplete(abortedMidway)).toBe(25);
  });

  it('rate counts unpaused rewrap time only, and the ETA follows from it', () => {
    let p = rewrapping(500);
    expect(rewrapRate(p, t0 + 10_000)).toBe(50);
    expect(etaSeconds(p, t0 + 10_000)).toBe(10);
    p = setPaused(p, true, t0 + 10_000);
    expect(etaSeconds(p, t0 + 20_000)).toBeUndefined();
    p = setPaused(p, false, t0 + 20_000);
    expect(p.pausedMs).toBe(10_000);
    expect(rewrapRate(p, t0 + 20_000)).toBe(50);
  });

  it('Finding 11: the rate is not inflated after verify sends the run back to rewrap, nor by pauses outside rewrap', () => {
    // 500 rewrapped in 10 s; verify; 10 s of grace paused; one more pass rewraps 100 in 2 s: 600 in 12 s.
    let p = rewrapping(500);
    p = enterPhase(p, 'verify', t0 + 10_000);
    p = setPaused(p, true, t0 + 10_000);
    p = setPaused(p, false, t0 + 20_000);
    p = enterPhase(p, 'rewrap', t0 + 20_000);
    p = { ...p, counters: { ...p.counters, rewrapped: 600 } };
    expect(rewrapRate(p, t0 + 22_000)).toBe(50);
    p = enterPhase(p, 'verify', t0 + 22_000);
    expect(rewrapRate(p, t0 + 99_000)).toBe(50);
  });

  it('phases record when they started and ended', () => {
    let p = initialProgress('v1', 'v2', false, t0);
    p = enterPhase(p, 'provision', t0 + 5);
    p = enterPhase(p, 'done', t0 + 9);
    expect(p.phases).toEqual({
      validate: { startedAt: t0, endedAt: t0 + 5 },
      provision: { startedAt: t0 + 5, endedAt: t0 + 9 },
      done: { startedAt: t0 + 9, endedAt: t0 + 9 },
    });
  });

  it('keeps a bounded list of failed tenants, each once', () => {
    let p = rewrapping(0);
    const failures = Array.from({ length: 80 }, (_, i) => ({ tenantId: `t${i}`, reason: 'bad' }));
    p = addSliceResult(p, { ...emptyCounters(), failed: 80 }, failures);
    p = addSliceResult(p, emptyCounters(), failures.slice(0, 5));
    expect(p.failedTenants).toHaveLength(MAX_FAILED_TENANTS);
    expect(p.counters.failed).toBe(80);
  });

  it('the report carries the derived figures', () => {
    expect(report(rewrapping(250), t0 + 5_000)).toMatchObject({ percent: 25, ratePerSecond: 50, etaSeconds: 15 });
  });
});

describe('durations', () => {
  it.each([
    ['7d', 604_800_000],
    ['36h', 129_600_000],
    ['90m', 5_400_000],
    ['30s', 30_000],
    ['500ms', 500],
    ['2 days', 172_800_000],
    ['1.5h', 5_400_000],
  ])('%s is %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', 'soon', '7', 'd7', '7 fortnights', '-1d'])('%j is not a duration', (text) =>
    expect(parseDuration(text)).toBeUndefined(),
  );

  it('formats the largest two units', () => {
    expect(formatDuration(604_800_000)).toBe('7d 0h');
    expect(formatDuration(5_400_000)).toBe('1h 30m');
    expect(formatDuration(42)).toBe('42ms');
  });
});

describe('slice ranges', () => {
  it('cover every tenant id without overlap', () => {
    expect(rangesFromBoundaries(['t-3', 't-6'])).toEqual([
      { after: '', until: 't-3' },
      { after: 't-3', until: 't-6' },
      { after: 't-6', until: null },
    ]);
  });

  it('collapse duplicate boundaries (few distinct tenants) and handle none', () => {
    expect(rangesFromBoundaries(['a', 'a', 'b'])).toHaveLength(3);
    expect(rangesFromBoundaries([])).toEqual([{ after: '', until: null }]);
  });
});
