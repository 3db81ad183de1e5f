import type { MigrationReport } from '../rotation/migration-report';
import { formatDuration } from '../rotation/durations';
import type { ProgressReport } from '../rotation/progress';
import { graceCountdown, migrationRunStatus } from '../rotation/run-status';

const n = (value: number) => value.toLocaleString('en-US');

/**
 * One line for people: phase, counters in the terms of the rotate-kek CLI, rate and ETA; in grace, when the old KEK
 * retires, counted down from `now` (the moment it is shown), not from the report's time. What the run waits for is
 * its status line's (src/rotation/run-status.ts).
 */
export function describeProgress(p: ProgressReport, now = Date.now()): string {
  const held = p.paused ? (p.heldBefore !== undefined ? ` (paused: holds before ${p.heldBefore})` : ' (paused)') : '';
  const parts = [`${p.target ? `${p.target} · ` : ''}${p.phase}${held}`];
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
    const grace = graceCountdown(p.graceEndsAt, now);
    parts.push(`'${p.from}' retires at ${grace.endsAt} (in ${grace.remaining})`);
  }
  if (p.fleet && (p.phase === 'promote' || p.fleet.ready < p.fleet.live)) {
    parts.push(`fleet ${p.fleet.ready}/${p.fleet.live} ready`);
  }
  return parts.join(' · ');
}

/** Rows a run looked at: every one it moved, found done, skipped, could not read, or left contended. */
export function scanned(p: ProgressReport): number {
  const c = p.counters;
  return c.rewrapped + (c.relabelled ?? 0) + c.alreadyOnTarget + c.skipped + c.failed + c.contended;
}

/**
 * The counters operators know from `rotate-kek` (Tenants scanned, Migrated, Already done, Skipped), then rekey's
 * own (Unreadable, Relabelled, CAS conflicts, and the calls made to a key store that does the crypto: AWS KMS).
 */
export function describeCounters(p: ProgressReport): string {
  const c = p.counters;
  const rows = p.noun === 'secret' ? 'Secrets' : p.noun === 'DEK' || p.noun === undefined ? 'Tenants' : 'Rows';
  return [
    `${rows} scanned: ${n(scanned(p))}`,
    `Migrated: ${n(c.rewrapped)}`,
    `Already done: ${n(c.alreadyOnTarget)}`,
    `Skipped: ${n(c.skipped)}`,
    `Unreadable: ${n(c.failed)}`,
    `Relabelled: ${n(c.relabelled ?? 0)}`,
    `CAS conflicts: ${n(c.casConflicts)}`,
    ...(c.keyStoreRequests !== undefined ? [`Key store requests: ${n(c.keyStoreRequests)}`] : []),
  ].join('  ');
}

/** A dry run's census, a line per KEK label. */
export function describeCensus(p: ProgressReport): string[] {
  return (p.census ?? []).map((line) =>
    line.kekId === '(none)'
      ? `KEK (none): ${n(line.rows)} rows hold no value`
      : `KEK '${line.kekId}': ${n(line.rows)} rows; of ${n(line.sampled)} sampled, ${n(line.readable)} read by the format, ` +
        (line.opens === undefined ? 'no key here to try them' : `${n(line.opens)} open under '${line.kekId}'`),
  );
}

/** One line of a running migration: `migrating, pass 1: 120 of 400 v1 values moved (30%), paused`. */
export function describeMigrationProgress(report: MigrationReport): string {
  const { rows, percent } = migrationRunStatus({ execution: 'RUNNING', report }, Date.now());
  const looked = report.totals.migrated + report.totals.unreadable + report.totals.casConflicts;
  const state = [
    report.phase === 'done' ? `${report.outcome ?? 'done'}` : report.phase,
    ...(report.passes > 0 ? [`pass ${report.passes}`] : []),
  ].join(', ');
  return [
    `${state}: ${rows.moved} of ${rows.total} v1 values moved (${percent}%)`,
    ...(looked > rows.moved ? [`${looked - rows.moved} left as they were (unreadable or contended)`] : []),
    ...(report.paused
      ? [report.partsRunning ? `pausing (${report.partsRunning} part(s) finishing their batch)` : 'paused']
      : []),
    ...(report.abortReason !== undefined ? [`aborted: ${report.abortReason}`] : []),
  ].join(', ');
}

/** A migrate-dek report in Mycelium's own terms, then what rekey adds (DEKs provisioned, unreadable values). */
export function describeMigration(report: MigrationReport): string[] {
  const groups = new Map<string, number>();
  for (const field of report.fields) groups.set(field.group, (groups.get(field.group) ?? 0) + field.counters.migrated);
  const verb = report.dryRun ? 'to migrate' : 'migrated';
  const lines = [
    ...(report.kekChoice !== undefined ? [`Current ${report.kekChoice}`] : []),
    ...(report.tenantId !== undefined ? [`Tenant: ${report.tenantId} (only the values under its DEK)`] : []),
    `Tenants scanned: ${report.tenants ?? 0}`,
    ...[...groups].map(([group, n]) => `${/s$/.test(group) ? group : `${group} fields`} ${verb}: ${n}`),
    `DEKs provisioned: ${report.totals.deksProvisioned}`,
    `Already v2: ${report.totals.alreadyCurrent}`,
    `Unreadable: ${report.totals.unreadable}`,
    ...report.failures.map((f) => `  ${f.where}, row ${f.row}: ${f.reason}`),
  ];
  if (report.byTenant) {
    lines.push('Tenants with v1 values:');
    lines.push(...report.byTenant.map((t) => `  ${t.tenant}: ${t.legacy}`));
  }
  if (report.legacyLeft !== undefined) lines.push(`Total left: ${report.legacyLeft}`);
  return lines;
}
