// What the Temporal Web UI shows of a rotation, in plain words: the static summary and details the starter sets, and
// the current details the workflow keeps up to date (phase, percent, rate, ETA, passes, what it waits for and the
// command that moves it on). Pure functions: the workflow and the client call them; nothing here has I/O.
import { formatDuration } from './durations';
import type { ProgressReport } from './progress';
import type { RunFailure } from '../errors';
import { rotationRunStatus } from './run-status';
import { describeTargetKek } from './rotation-input';

/** Who started a rotation, as the Web UI says it: the surface, never a secret. */
export type StartedBy = 'rekey CLI' | 'admin API' | 'schedule' | 'demo' | (string & {});

export interface RotationDescription {
  target: string;
  from: string;
  to: string;
  gracePeriod?: string;
  dryRun?: boolean;
  tenantId?: string;
  /** `<database id>/<schema.table>`: which table in which database the target is. */
  keyspace?: string;
}

/** One line: `rotate talos: v1 → v2` (a dry run or a canary says so). */
export function staticSummary(rotation: RotationDescription): string {
  const kind = rotation.dryRun ? 'dry run of the rotation' : rotation.tenantId ? 'canary rotation' : 'rotate';
  return `${kind} ${rotation.target}: ${rotation.from} → ${describeTargetKek(rotation.to, (id) => id)}`;
}

/** Markdown: the keyspace, the keys, the grace period, and who started it. */
export function staticDetails(rotation: RotationDescription, startedBy: StartedBy): string {
  return [
    `**Keyspace:** \`${rotation.target}\`` + (rotation.keyspace !== undefined ? ` (\`${rotation.keyspace}\`)` : ''),
    `**KEK:** \`${rotation.from}\` → ${describeTargetKek(rotation.to, (id) => `\`${id}\``)}`,
    `**Grace period:** ${rotation.gracePeriod ?? 'the default (7d)'}`,
    ...(rotation.tenantId !== undefined ? [`**Canary tenant:** \`${rotation.tenantId}\``] : []),
    ...(rotation.dryRun ? ['**Dry run:** counts and a census, writes nothing'] : []),
    `**Started by:** ${startedBy}`,
  ].join('\n\n');
}

const n = (value: number) => Math.round(value).toLocaleString('en-US');

/**
 * Markdown for the Web UI's current details of a run that failed (the reason rekey status gives): the keys and what
 * moved, and no command, since none of those of a running run (confirm, resume, grace) can act on it any more.
 */
export function failedDetails(report: ProgressReport, failure: RunFailure, workflowId: string): string {
  const kept = currentDetails(report, workflowId)
    .split('\n\n')
    .filter((line) => line.startsWith('**KEK:**') || line.startsWith('**Rewrapped:**'));
  // The failure's code and kind, and what to do next, as the CLI and the admin API name them (errorAnswer).
  const named = [
    `**Error:** \`${failure.error}\` (${failure.kind})`,
    ...(failure.next ? [`**Next:** ${failure.next}`] : []),
  ];
  return [`**Failed:** ${failure.message}`, ...named, ...kept].join('\n\n');
}

/** Markdown for the Web UI's current details; `workflowId` goes into the commands it suggests. */
export function currentDetails(report: ProgressReport, workflowId: string): string {
  const lines: string[] = [];
  const noun = report.noun ?? 'DEK';
  // The one status (run-status.ts), as the workflow knows it: a step Temporal retries is on the run's page beside this.
  const run = rotationRunStatus(
    { execution: report.outcome === 'running' ? 'RUNNING' : 'COMPLETED', progress: report },
    report.at,
  );
  if (run.ended) {
    lines.push(`**${run.label}:** ${run.reason}`);
  } else {
    // The phase, not the status's reason: that counts the grace period down from the time it was written.
    const head = [`**${run.label}:** ${report.phase}`];
    if (report.passes > 0) head.push(`pass ${report.passes}`);
    head.push(`**${report.percent}%**`);
    if (report.phase === 'rewrap' && report.ratePerSecond > 0) head.push(`${n(report.ratePerSecond)} ${noun}s/s`);
    if (report.etaSeconds !== undefined) head.push(`ETA ${formatDuration(report.etaSeconds * 1000)}`);
    lines.push(head.join(' · '));
  }
  const to = describeTargetKek(report.to, (id) => `\`${id}\``);
  lines.push(`**KEK:** \`${report.from}\` → ${to}${report.target ? ` of \`${report.target}\`` : ''}`);
  const { counters } = report;
  lines.push(
    `**Rewrapped:** ${n(counters.rewrapped)} of ${n(report.staleAtStart)} · CAS conflicts ${n(counters.casConflicts)} · unreadable ${n(counters.failed)}`,
  );
  if (report.paused) {
    lines.push(
      `**Paused**${report.heldBefore ? ` before ${report.heldBefore}` : ''}. To go on: \`rekey resume ${workflowId}\` (or the \`resume\` signal)`,
    );
  }
  if (report.waiting) {
    lines.push(
      `**Waiting for ${report.waiting.kind === 'fleet' ? 'the fleet' : 'the application'}:** ${report.waiting.instructions}`,
    );
    if (report.waiting.command) lines.push(`**Then:** \`${report.waiting.command}\``);
  }
  if (report.fleet && report.fleet.waitingFor.length > 0) {
    lines.push(`**Fleet:** ${report.fleet.ready} of ${report.fleet.live} instances ready`);
  }
  if (report.graceEndsAt !== undefined && report.phase === 'grace') {
    // The absolute end only: these details are written when the run changes, so a countdown here would be stale.
    lines.push(
      `**Grace until** ${new Date(report.graceEndsAt).toISOString()}. To change it: \`rekey grace ${workflowId} --extend 2d\` or \`--end-now\``,
    );
  }
  if (report.note && report.outcome === 'running') lines.push(`**Note:** ${report.note}`);
  return lines.join('\n\n');
}
