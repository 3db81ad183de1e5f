import { describe, expect, it } from 'vitest';
import { initialProgress, report, setPaused, type RotationProgress } from '../../src/rotation/progress';
import { currentDetails, staticDetails, staticSummary } from '../../src/rotation/web-ui';

const at = Date.UTC(2026, 11, 1);

describe('what the Web UI shows of a rotation', () => {
  it("a rotation to 'new' is summarised as a new KEK whose id provision chooses, never as a KEK named 'new'", () => {
    expect(staticSummary({ target: 'rekey', from: 'v1', to: 'new' })).toBe(
      'rotate rekey: v1 → a new KEK (id chosen at provision)',
    );
    expect(staticDetails({ target: 'rekey', from: 'v1', to: 'new' }, 'rekey CLI')).toContain(
      '**KEK:** `v1` → a new KEK (id chosen at provision)',
    );
    const before = initialProgress('v1', 'new', false, at, 'rekey');
    expect(currentDetails(report(before, at), 'kek-rotation-rekey.x')).toContain(
      '**KEK:** `v1` → a new KEK (id chosen at provision) of `rekey`',
    );
    expect(currentDetails(report({ ...before, to: 'v2' }, at), 'kek-rotation-rekey.x')).toContain(
      '**KEK:** `v1` → `v2` of `rekey`',
    );
  });

  it('a one-line summary, and details that say who started it', () => {
    expect(staticSummary({ target: 'talos', from: 'v1', to: 'v2' })).toBe('rotate talos: v1 → v2');
    expect(staticSummary({ target: 'talos', from: 'v1', to: 'v2', dryRun: true })).toBe(
      'dry run of the rotation talos: v1 → v2',
    );
    expect(staticSummary({ target: 'rekey', from: 'v1', to: 'v2', tenantId: 't-1' })).toBe(
      'canary rotation rekey: v1 → v2',
    );
    expect(staticDetails({ target: 'talos', from: 'v1', to: 'v2', gracePeriod: '7d' }, 'admin API')).toBe(
      '**Keyspace:** `talos`\n\n**KEK:** `v1` → `v2`\n\n**Grace period:** 7d\n\n**Started by:** admin API',
    );
  });

  it('current details: the status and phase, percent, rate, ETA; paused with the command that resumes it', () => {
    let progress: RotationProgress = {
      ...initialProgress('v1', 'v2', false, at, 'talos'),
      phase: 'rewrap',
      phases: { rewrap: { startedAt: at } },
      passes: 1,
      staleAtStart: 1000,
    };
    progress = { ...progress, counters: { ...progress.counters, rewrapped: 250 } };
    const running = currentDetails(report(progress, at + 10_000), 'kek-rotation-talos');
    expect(running.split('\n\n')).toEqual([
      '**Running:** rewrap · pass 1 · **25%** · 25 DEKs/s · ETA 30s',
      '**KEK:** `v1` → `v2` of `talos`',
      '**Rewrapped:** 250 of 1,000 · CAS conflicts 0 · unreadable 0',
    ]);
    const paused = currentDetails(
      report({ ...setPaused(progress, true, at + 10_000), heldBefore: 'promote' }, at + 20_000),
      'kek-rotation-talos',
    );
    expect(paused.split('\n\n')[0]).toBe('**Paused:** rewrap · pass 1 · **25%** · 25 DEKs/s');
    expect(paused).toContain('**Paused** before promote. To go on: `rekey resume kek-rotation-talos`');
  });

  it('current details: what the run waits for and the command that moves it on; grace with its end; the end in the words of rekey status', () => {
    const base = { ...initialProgress('v1', 'v2', false, at, 'talos'), phase: 'retire' as const };
    const waiting = currentDetails(
      report(
        {
          ...base,
          waiting: {
            kind: 'application',
            step: 'retire',
            instructions: 'remove TALOS_KEK_v1 from every gateway and restart it',
            command: 'rekey confirm kek-rotation-talos --step retire --note "…"',
            since: at,
          },
        },
        at,
      ),
      'kek-rotation-talos',
    );
    expect(waiting).toContain(
      '**Waiting for the application:** remove TALOS_KEK_v1 from every gateway and restart it\n\n**Then:** `rekey confirm kek-rotation-talos --step retire --note "…"`',
    );
    const grace = currentDetails(report({ ...base, phase: 'grace', graceEndsAt: at }, at), 'kek-rotation-talos');
    expect(grace).toContain(
      '**Grace until** 2026-12-01T00:00:00.000Z. To change it: `rekey grace kek-rotation-talos --extend 2d` or `--end-now`',
    );
    expect(waiting.split('\n\n')[0]).toBe('**Waiting for the application:** retire · **100%**');
    const ended = currentDetails(
      report(
        {
          ...base,
          phase: 'done',
          outcome: 'completed',
          staleAtStart: 10,
          counters: { ...base.counters, rewrapped: 10 },
        },
        at,
      ),
      'kek-rotation-talos',
    );
    expect(ended.split('\n\n')[0]).toBe("**Succeeded:** 'v1' → 'v2': 10 of 10 rows moved, verified; 'v1' retired");
    const aborted = currentDetails(
      report(
        {
          ...initialProgress('v1', 'v2', false, at, 'talos'),
          phase: 'done',
          phases: { validate: { startedAt: at, endedAt: at }, promote: { startedAt: at, endedAt: at } },
          outcome: 'aborted',
          note: "aborted: fleet not ready; both 'v1' and 'v2' still unwrap, nothing was retired",
        },
        at,
      ),
      'kek-rotation-talos',
    );
    expect(aborted.split('\n\n')[0]).toBe(
      "**Aborted:** fleet not ready; both 'v1' and 'v2' still unwrap, nothing was retired; no row moved",
    );
  });
});
