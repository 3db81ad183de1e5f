import { Command, CommanderError } from 'commander';
import { controlCommands } from './commands/control';
import { historyCommand } from './commands/history';
import { kekStatusCommand, keysCommand } from './commands/keks';
import { migrateDekCommand } from './commands/migrate-dek';
import { rotateCommand } from './commands/rotate';
import { scheduleCommand } from './commands/schedule';
import { statusCommand } from './commands/status';
import { setProgramEnv, targetFromEnv } from './options';
import {
  databaseUnreachable,
  errorAnswer,
  errorKind,
  EXIT_CODES,
  failureMessage,
  hasKnownType,
  plainErrorLine,
  RekeyError,
  TargetConfigError,
} from '../errors';

export function createProgram(env: NodeJS.ProcessEnv = process.env): Command {
  const program = new Command('rekey')
    .description('durable KEK rotation for envelope encryption, on Temporal')
    .option('--address <host:port>', 'Temporal frontend', env.TEMPORAL_ADDRESS ?? 'localhost:7233')
    .option('--namespace <ns>', 'Temporal namespace', env.TEMPORAL_NAMESPACE ?? 'default')
    .option('--task-queue <name>', 'task queue of the rekey workers', env.REKEY_TASK_QUEUE ?? 'rekey')
    .option('--json', 'machine-readable output')
    .showHelpAfterError()
    .exitOverride()
    .hook('preAction', targetFromEnv);
  setProgramEnv(program, env);
  for (const command of [
    rotateCommand(),
    migrateDekCommand(),
    statusCommand(),
    historyCommand(),
    ...controlCommands(),
    kekStatusCommand(),
    keysCommand(),
    scheduleCommand(),
  ]) {
    program.addCommand(command);
  }
  // Every command, nested ones (schedule create, keys generate) included, reports its parse errors to runCli instead
  // of exiting by itself with 1: bad input exits 2 wherever it is.
  const overrideAll = (command: Command): void => {
    command.exitOverride();
    command.commands.forEach(overrideAll);
  };
  overrideAll(program);
  return program;
}

/** Runs the CLI; returns the exit code. Errors become one line on stderr. */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  try {
    await createProgram(env).parseAsync(argv, { from: 'user' });
    return EXIT_CODES.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed its own message (or the help, which is not an error).
      return err.exitCode === 0 ? EXIT_CODES.ok : EXIT_CODES.invalid;
    }
    const { stderr, exit } = cliErrorOutput(err, argv.includes('--json'));
    process.stderr.write(stderr);
    return exit;
  }
}

/**
 * What the CLI says of an error: one line on stderr, and the exit code of the error's kind (src/errors.ts), the same
 * mapping as the admin API's statuses. With --json the same line as JSON, with the admin API's error code, the kind,
 * what to do next (a run's failure of a workflow failure type) and the exit code: both say the one answer
 * (errorAnswer). A configuration file's error keeps the excerpt that shows where the mistake is.
 */
export function cliErrorOutput(err: unknown, json: boolean): { stderr: string; exit: number } {
  const unreachable = errorKind(err) === 'unavailable' ? databaseUnreachable(err) : undefined;
  // A Temporal failure that carries one of rekey's errors says that error's message, not Temporal's wrapper's.
  const own = err instanceof RekeyError || !hasKnownType(err) ? undefined : failureMessage(err);
  const message = unreachable?.message ?? own ?? (err instanceof Error ? err.message : String(err));
  const line = err instanceof TargetConfigError ? message : message.split('\n')[0]!;
  const answer = errorAnswer(err, line);
  if (!json) return { stderr: `rekey: ${plainErrorLine(answer)}\n`, exit: answer.exit };
  const { error, kind, next, exit } = answer;
  return {
    stderr: `${JSON.stringify({ error, kind, message: line, ...(next !== undefined && { next }), exit })}\n`,
    exit,
  };
}
