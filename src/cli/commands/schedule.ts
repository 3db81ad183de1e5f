import { ScheduleAlreadyRunning, ScheduleNotFoundError, type Client } from '@temporalio/client';
import { Command } from 'commander';
import {
  checkNoticeOptions,
  createRotationSchedule,
  DEFAULT_SCHEDULE_ID,
  deleteRotationSchedule,
  listRotationSchedules,
  QUARTERLY_CRON,
} from '../../client/schedules';
import { duration, targetOption, withContext } from '../options';
import { CliError, InvalidRotationError } from '../../errors';
import type { Keyspace } from '../../rotation/identity';
import type { RotationRequest } from '../../rotation/rotation-input';

export function scheduleCommand(): Command {
  const schedule = new Command('schedule').description('a Temporal Schedule that rotates to a newly generated KEK');
  schedule
    .command('create')
    .description(`quarterly by default (${QUARTERLY_CRON}); overlapping runs are skipped`)
    .option('--id <id>', 'schedule id', DEFAULT_SCHEDULE_ID)
    .option('--cron <expression>', 'cron expression (UTC)')
    .option('--every <duration>', 'a fixed interval instead, e.g. 90d', duration)
    .option('--grace <duration>', 'grace period of each rotation', duration, '7d')
    .option('--min-kek-age <duration>', 'a run does nothing if the active KEK is younger than this', duration, '30d')
    .option('--notify-before <duration>', 'announce each rotation this long before it starts, e.g. 7d', duration)
    .option('--notify-url <url>', 'POST the notice there as JSON, signed with REKEY_NOTIFY_SECRET (set on the worker)')
    .addOption(targetOption())
    .action(
      withContext(
        async (
          context,
          options: {
            id: string;
            cron?: string;
            every?: string;
            grace: string;
            minKekAge: string;
            target: string;
            notifyBefore?: string;
            notifyUrl?: string;
          },
        ) => {
          if (options.cron && options.every) throw new CliError('give --cron or --every, not both', 'invalid');
          try {
            checkNoticeOptions(options);
          } catch (err) {
            if (err instanceof InvalidRotationError) throw new CliError(err.message, 'invalid');
            throw err;
          }
          try {
            const id = await createRotationSchedule(await context.temporal(), {
              scheduleId: options.id,
              cron: options.cron,
              every: options.every,
              gracePeriod: options.grace,
              minKekAge: options.minKekAge,
              target: options.target,
              keyspace: await context.targets().keyspace(options.target),
              taskQueue: context.options.taskQueue,
              ...(options.notifyBefore !== undefined && { notifyBefore: options.notifyBefore }),
              ...(options.notifyUrl !== undefined && { notifyUrl: options.notifyUrl }),
            });
            context.print({ scheduleId: id, created: true }, () => [
              `created schedule ${id}`,
              `  Web UI: ${context.webUiPage(`schedules/${encodeURIComponent(id)}`)}`,
            ]);
          } catch (err) {
            if (err instanceof ScheduleAlreadyRunning)
              throw new CliError(
                await alreadyExists(
                  await context.temporal(),
                  options.id,
                  options.target,
                  await context.targets().keyspace(options.target),
                ),
                'conflict',
              );
            // The worker's answer: a target whose runs could never do their work.
            if (err instanceof InvalidRotationError) throw new CliError(err.message, 'invalid');
            throw err;
          }
        },
      ),
    );
  schedule
    .command('list')
    .description('rotation schedules, their next and recent runs')
    .action(
      withContext(async (context) => {
        const schedules = await listRotationSchedules(await context.temporal());
        context.print(schedules, () =>
          schedules.length === 0
            ? ['no rotation schedules']
            : schedules.flatMap((s) => [
                `${s.scheduleId}: ${s.spec}${s.paused ? ' (paused)' : ''}; next rotation ${s.nextRuns[0] ?? '-'}` +
                  (s.nextNotice ? `; notice ${s.nextNotice}` : s.noticedFor ? `; announced ${s.noticedFor}` : '') +
                  // What it rotates: a namespace holds the schedules of every target and database it serves.
                  `; rotates target '${s.target}'` +
                  (s.keyspace ? ` of keyspace ${s.keyspace}` : ''),
                // Each recent run, in the words of rekey status.
                ...s.runs.map((run) => `  ${run.at}  ${run.rotation ?? run.launcher}: ${run.line}`),
              ]),
        );
      }),
    );
  schedule
    .command('trigger')
    .description('start the scheduled rotation now')
    .argument('<id>')
    .action(
      withContext(async (context, id: string) => {
        await notFoundAsExit(id, () => (async () => (await context.temporal()).schedule.getHandle(id).trigger())());
        context.print({ scheduleId: id, triggered: true }, () => [`triggered schedule ${id}`]);
      }),
    );
  schedule
    .command('delete')
    .argument('<id>')
    .action(
      withContext(async (context, id: string) => {
        await notFoundAsExit(id, async () => deleteRotationSchedule(await context.temporal(), id));
        context.print({ scheduleId: id, deleted: true }, () => [`deleted schedule ${id}`]);
      }),
    );
  return schedule;
}

/**
 * Why `schedule create` is refused when the id is taken, and what to do: a schedule id is one per namespace, so a
 * second target or a second database of the namespace needs its own `--id`. Names what the existing one rotates.
 */
async function alreadyExists(client: Client, id: string, ours: string, keyspace: Keyspace): Promise<string> {
  const described = await client.schedule
    .getHandle(id)
    .describe()
    .catch(() => undefined);
  const request =
    described?.action.type === 'startWorkflow'
      ? (described.action.args?.[0] as RotationRequest | undefined)
      : undefined;
  const target = request?.target ?? 'rekey';
  if (request?.keyspace === keyspace.id) {
    return (
      `schedule ${id} already exists for this keyspace (target '${target}', ${keyspace.id}): to change it, ` +
      `delete it first (rekey schedule delete ${id}), then create it again`
    );
  }
  const whose = request?.keyspace
    ? `it rotates target '${target}' of keyspace ${request.keyspace}, not ${keyspace.id}`
    : `it rotates target '${target}'`;
  return (
    `schedule ${id} already exists (${whose}): a schedule id is one per Temporal namespace; give this one its own, ` +
    `e.g. --id ${id}-${ours}-${keyspace.databaseId.slice(0, 8)}`
  );
}

async function notFoundAsExit(id: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw new CliError(`no schedule '${id}'`, 'not-found');
    throw err;
  }
}
