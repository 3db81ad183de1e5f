import { SingleBar } from 'cli-progress';
import { Command } from 'commander';
import { isMigrationReference, migrationStatus, type MigrationStatus } from '../../client/migrations';
import { rotationStatus, type RotationStatus } from '../../client/rotations';
import type { CliContext } from '../context';
import { describeCounters, describeMigration, describeMigrationProgress, describeProgress } from '../format';
import { withContext } from '../options';
import { CliError } from '../../errors';

function humanStatus(s: RotationStatus): string[] {
  const lines = [`rotation ${s.opId}: ${s.status.toLowerCase()}`];
  if (s.progress) {
    lines.push(`  ${describeProgress(s.progress)}`, `  ${describeCounters(s.progress)}`);
    if (s.progress.note) lines.push(`  note: ${s.progress.note}`);
    if (s.progress.waiting) {
      lines.push(`  waiting for the ${s.progress.waiting.kind}: ${s.progress.waiting.instructions}`);
      if (s.progress.waiting.command) lines.push(`  then: ${s.progress.waiting.command}`);
    }
    for (const f of s.progress.failedTenants.slice(0, 5)) lines.push(`  unreadable: ${f.tenantId} (${f.reason})`);
  }
  if (s.failure) lines.push(`  failed: ${s.failure}`);
  return lines;
}

function humanMigrationStatus(s: MigrationStatus): string[] {
  const lines = [`migration ${s.workflowId}: ${s.status.toLowerCase()}`];
  if (s.report) {
    lines.push(`  ${describeMigrationProgress(s.report)}`, ...describeMigration(s.report).map((l) => `  ${l}`));
  }
  if (s.failure) lines.push(`  failed: ${s.failure}`);
  return lines;
}

/** Follows a migration until it ends: its progress line whenever it changes, then its report. */
async function watchMigration(context: CliContext, reference: string): Promise<void> {
  const temporal = await context.temporal();
  let status = await migrationStatus(temporal, reference, context.keyspaceOf);
  const { workflowId } = status;
  let last = '';
  while (status.status === 'RUNNING') {
    const line = status.report ? describeMigrationProgress(status.report) : '';
    if (line !== last && !context.options.json) context.out(`  ${line}`);
    last = line;
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    status = await migrationStatus(temporal, workflowId);
  }
  context.print(status, () => humanMigrationStatus(status));
  if (status.status !== 'COMPLETED')
    throw new CliError(`migration ${workflowId} ${status.status.toLowerCase()}: ${status.failure ?? 'see the Web UI'}`);
}

async function statusOf(context: CliContext, reference: string): Promise<RotationStatus> {
  return rotationStatus(await context.temporal(), reference, context.keyspaceOf);
}

/** Follows a rotation until it ends: a live bar on a terminal, a line every few seconds otherwise. */
export async function watchRotation(context: CliContext, reference: string): Promise<void> {
  const tty = process.stdout.isTTY && !context.options.json;
  const bar = tty ? new SingleBar({ format: ' {bar} {percentage}% | {line}', hideCursor: true }) : undefined;
  let status = await statusOf(context, reference);
  bar?.start(100, 0, { line: '' });
  let last = '';
  while (status.status === 'RUNNING') {
    const line = status.progress ? describeProgress(status.progress) : '';
    if (bar) bar.update(status.progress?.percent ?? 0, { line });
    else if (line !== last && !context.options.json) context.out(`  ${line}`);
    last = line;
    await new Promise((resolve) => setTimeout(resolve, tty ? 500 : 2_000));
    status = await statusOf(context, reference);
  }
  bar?.update(status.progress?.percent ?? 0, { line: status.status.toLowerCase() });
  bar?.stop();
  context.print(status, () => humanStatus(status));
  if (status.status !== 'COMPLETED')
    throw new CliError(`rotation ${status.opId} ${status.status.toLowerCase()}: ${status.failure ?? 'see the Web UI'}`);
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
          return;
        }
        if (options.watch) return watchRotation(context, reference);
        const status = await statusOf(context, reference);
        context.print(status, () => humanStatus(status));
      }),
    );
}
