import { Command, Option } from 'commander';
import { runHistory, type HistoryEntry } from '../../client/history';
import { positiveInteger, targetOption, withContext } from '../options';
import { describeTargetKek } from '../../rotation/rotation-input';

const n = (value: number) => value.toLocaleString('en-US');

/** One run, as `rekey history` prints it: when, what, how it ended, its counts; then why, unless it succeeded. */
function humanEntry(entry: HistoryEntry): string[] {
  const keks =
    entry.kind === 'migration'
      ? `v1 values → DEKs${entry.to !== undefined ? ` (KEK ${entry.to})` : ''}`
      : `${entry.from ?? '?'} → ${entry.to === undefined ? '?' : describeTargetKek(entry.to, (id) => id)}`;
  const noun = entry.kind === 'migration' ? 'values' : 'rows';
  const counts = `${n(entry.rows.moved)} of ${n(entry.rows.total)} ${noun} moved${entry.rows.unreadable > 0 ? `, ${n(entry.rows.unreadable)} unreadable` : ''}`;
  return [
    `${entry.startedAt}  ${entry.endedAt ?? 'running'.padEnd(24)}  ${entry.kind.padEnd(9)}  ${keks}  ${entry.label}  ${counts}  ${entry.opId}`,
    ...(entry.state === 'succeeded' ? [] : [`    ${entry.reason}`]),
    ...(entry.databaseUnknown !== undefined ? [`    database unknown: ${entry.databaseUnknown}`] : []),
  ];
}

export function historyCommand(): Command {
  return new Command('history')
    .description(
      "a keyspace's rotations and migrations, newest first: from → to, start, end, how each ended, and its counts",
    )
    .argument('[target]', 'the keyspace (default: --target)')
    .addOption(targetOption())
    .addOption(new Option('--limit <n>', 'at most this many runs').argParser(positiveInteger).default(20))
    .action(
      withContext(async (context, given: string | undefined, options: { target: string; limit: number }) => {
        const target = given ?? options.target;
        const history = await runHistory({
          db: await context.targets().databaseOf(target),
          client: () => context.temporal(),
          target,
          keyspace: await context.targets().keyspace(target),
          limit: options.limit,
        });
        context.print(history, () => [
          `history of target '${target}', newest first (started, ended, kind, KEKs, outcome, counts, op id):`,
          ...(history.runs.length === 0 ? ['  no rotation or migration yet'] : []),
          ...history.runs.flatMap((entry) => humanEntry(entry).map((line) => `  ${line}`)),
          ...(history.temporalUnavailable !== undefined
            ? [`  (Temporal not asked: ${history.temporalUnavailable}; running runs are not listed)`]
            : []),
        ]);
      }),
    );
}
