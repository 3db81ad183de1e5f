import { SingleBar } from 'cli-progress';
import { Command } from 'commander';
import { isMigrationReference, migrationStatus, type MigrationStatus } from '../../client/migrations';
import { rotationStatus, type KeyspaceLookup, type RotationStatus } from '../../client/rotations';
import type { RunStatus } from '../../rotation/run-status';
import type { CliContext } from '../context';
import { describeCounters, describeMigration, describeMigrationProgress, describeProgress } from '../format';
import { withContext } from '../options';
import { CliError, type ErrorKind } from '../../errors';

/** What `rekey status` prints of a rotation: its one status (src/rotation/run-status.ts), then the details. */
export function humanStatus(s: RotationStatus): string[] {
  const { run } = s;
  const lines = [`rotation ${s.opId}: ${run.line}`];
  if (s.progress) {
    lines.push(`  ${describeProgress(s.progress)}`, `  ${describeCounters(s.progress)}`);
    // An ended run's note is its reason, already on the first line.
    if (s.progress.note && !run.ended) lines.push(`  note: ${s.progress.note}`);
    // An application's step names its command on the first line already; the fleet's override is offered here.
    if (run.command && !run.line.endsWith(run.command)) lines.push(`  then: ${run.command}`);
    for (const f of s.progress.failedTenants.slice(0, 5)) lines.push(`  unreadable: ${f.tenantId} (${f.reason})`);
  }
  if (run.retrying) {
    lines.push(
      `  retrying: ${run.retrying.step} step ${run.retrying.activity}, attempt ${run.retrying.attempt}; last error: ${run.retrying.lastError ?? '(none recorded)'}`,
    );
  }
  return lines;
}

function humanMigrationStatus(s: MigrationStatus): string[] {
  const lines = [`migration ${s.workflowId}: ${s.run.line}`];
  if (s.report) {
    lines.push(`  ${describeMigrationProgress(s.report)}`, ...describeMigration(s.report).map((l) => `  ${l}`));
  }
  if (s.run.retrying) {
    lines.push(
      `  retrying: ${s.run.retrying.step} step ${s.run.retrying.activity}, attempt ${s.run.retrying.attempt}; last error: ${s.run.retrying.lastError ?? '(none recorded)'}`,
    );
  }
  return lines;
}

/** Follows a migration until it ends: its progress line whenever it changes, then its status once. */
export async function watchMigration(context: CliContext, reference: string): Promise<void> {
  const temporal = await context.temporal();
  // The first read resolves the reference (a target's shorthand); the next ones ask for the workflow it found.
  let id = reference;
  let lookup: KeyspaceLookup | undefined = context.keyspaceOf;
  await watchRun(
    context,
    async () => {
      const status = await migrationStatus(temporal, id, lookup);
      id = status.workflowId;
      lookup = undefined;
      return status;
    },
    {
      line: (s) => (s.run.state === 'running' && s.report ? describeMigrationProgress(s.report) : s.run.line),
      ending: (s) => s.report !== undefined && (s.report.phase === 'done' || s.report.outcome !== undefined),
      human: humanMigrationStatus,
      end: migrationEnd,
    },
  );
}

/**
 * Follows a run until it ends, for rotations and migrations alike: its line whenever it changes (a live bar on a
 * terminal where `bar` is asked), then its status, once. A run that has its outcome is only recording its end (still
 * RUNNING to Temporal): its line is not printed then, since its status says it once the run has closed.
 */
async function watchRun<S extends { status: string; run: RunStatus }>(
  context: CliContext,
  read: () => Promise<S>,
  shape: {
    line: (status: S) => string;
    ending: (status: S) => boolean;
    human: (status: S) => string[];
    end: (status: S) => CliError | undefined;
    bar?: boolean;
  },
): Promise<void> {
  const tty = shape.bar === true && process.stdout.isTTY && !context.options.json;
  const bar = tty ? new SingleBar({ format: ' {bar} {percentage}% | {line}', hideCursor: true }) : undefined;
  let status = await read();
  bar?.start(100, 0, { line: '' });
  let last = '';
  while (status.status === 'RUNNING') {
    const line = shape.line(status);
    if (bar) bar.update(status.run.percent, { line });
    else if (line !== last && !shape.ending(status) && !context.options.json) context.out(`  ${line}`);
    last = line;
    await new Promise((resolve) => setTimeout(resolve, tty ? 500 : 2_000));
    status = await read();
  }
  bar?.update(status.run.percent, { line: status.run.label });
  bar?.stop();
  context.print(status, () => shape.human(status));
  const ended = shape.end(status);
  if (ended) throw ended;
}

/**
 * What a command that reports a run's end (`--wait`, `status`) exits with: nothing (0) while it runs or once it
 * succeeded; the kind of its failure when it failed (VerifyFailed 5, a missing table 2, ...); 1 when it was aborted
 * (it did not do what was asked) or ended otherwise (terminated, timed out).
 */
function runEnd(
  what: string,
  status: { status: string; failure?: string; failureKind?: ErrorKind; failureType?: string },
  aborted: string | undefined,
): CliError | undefined {
  if (status.status === 'RUNNING') return undefined;
  if (status.status === 'COMPLETED') return aborted === undefined ? undefined : new CliError(`${what}: ${aborted}`);
  return new CliError(
    `${what} ${status.status.toLowerCase()}: ${status.failure ?? 'see the Web UI'}`,
    status.failureKind ?? 'failed',
    status.failureType,
  );
}

const migrationEnd = (s: MigrationStatus) =>
  runEnd(
    `migration ${s.workflowId}`,
    s,
    s.report?.outcome === 'aborted' ? `aborted: ${s.report.abortReason ?? 'by an operator'}` : undefined,
  );
const rotationEnd = (s: RotationStatus) =>
  runEnd(`rotation ${s.opId}`, s, s.progress?.outcome === 'aborted' ? (s.progress.note ?? 'aborted') : undefined);

async function statusOf(context: CliContext, reference: string): Promise<RotationStatus> {
  return rotationStatus(await context.temporal(), reference, context.keyspaceOf);
}

/** Follows a rotation until it ends: a live bar on a terminal, a line every few seconds otherwise. */
export async function watchRotation(context: CliContext, reference: string): Promise<void> {
  await watchRun(context, () => statusOf(context, reference), {
    line: (s) => (s.run.state === 'running' && s.progress ? describeProgress(s.progress) : s.run.line),
    ending: (s) => s.progress !== undefined && s.progress.outcome !== 'running',
    human: humanStatus,
    end: rotationEnd,
    bar: true,
  });
}

export function statusCommand(): Command {
  return new Command('status')
    .description(
      'phase and counters of a rotation (target, workflow id, op id, or from:to) or a migration (its workflow id, or dek-migration-<target>); a target name needs DATABASE_URL',
    )
    .argument('<rotation>')
    .option('--watch', 'follow it with a live progress bar, rate and ETA until it ends')
    .action(
      withContext(async (context, reference: string, options: { watch?: boolean }) => {
        if (isMigrationReference(reference)) {
          if (options.watch) return watchMigration(context, reference);
          const status = await migrationStatus(await context.temporal(), reference, context.keyspaceOf);
          context.print(status, () => humanMigrationStatus(status));
          const ended = migrationEnd(status);
          if (ended) throw ended;
          return;
        }
        if (options.watch) return watchRotation(context, reference);
        const status = await statusOf(context, reference);
        context.print(status, () => humanStatus(status));
        // The exit code says how the run ended, as `--wait` would have.
        const ended = rotationEnd(status);
        if (ended) throw ended;
      }),
    );
}
