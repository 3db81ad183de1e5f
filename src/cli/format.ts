import { formatDuration } from '../rotation/durations';
import type { ProgressReport } from '../rotation/progress';

const n = (value: number) => value.toLocaleString('en-US');

/** One line for people: phase, counters in the terms of the rotate-kek CLI, rate and ETA. */
export function describeProgress(p: ProgressReport): string {
  const parts = [`${p.phase}${p.paused ? ' (paused)' : ''}`];
  if (p.phase === 'rewrap' || p.passes > 0) {
    parts.push(
      `${p.percent}%`,
      `${n(p.counters.rewrapped)}/${n(p.staleAtStart)} ${p.dryRun ? 'would migrate' : 'rewrapped'}`,
    );
    if (p.ratePerSecond > 0) parts.push(`${n(p.ratePerSecond)}/s`);
    if (p.etaSeconds !== undefined) parts.push(`ETA ${formatDuration(p.etaSeconds * 1000)}`);
    parts.push(`pass ${p.passes}`, `CAS conflicts ${n(p.counters.casConflicts)}`);
    if (p.counters.failed > 0) parts.push(`unreadable ${n(p.counters.failed)}`);
  }
  if (p.phase === 'grace' && p.graceEndsAt !== undefined) {
    parts.push(`old KEK retires in ${formatDuration(Math.max(0, p.graceEndsAt - p.at))}`);
  }
  if (p.fleet && (p.phase === 'promote' || p.fleet.ready < p.fleet.live)) {
    parts.push(`fleet ${p.fleet.ready}/${p.fleet.live} ready`);
  }
  return parts.join(' · ');
}

/** The counters operators know from `rotate-kek`: Migrated / Skipped / Already done, plus unreadable. */
export function describeCounters(p: ProgressReport): string {
  const c = p.counters;
  return [
    `Migrated: ${n(c.rewrapped)}`,
    `Skipped: ${n(c.skipped)}`,
    `Already done: ${n(c.alreadyOnTarget)}`,
    `Unreadable: ${n(c.failed)}`,
    `CAS conflicts: ${n(c.casConflicts)}`,
  ].join('  ');
}
