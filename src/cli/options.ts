import { Command, InvalidArgumentError, Option } from 'commander';
import { parseDuration } from '../rotation/durations';
import { CliContext, type GlobalOptions } from './context';
import { CliError } from '../errors';

export function positiveInteger(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1) throw new InvalidArgumentError('expected a whole number of at least 1');
  return n;
}

export function duration(value: string): string {
  if (parseDuration(value) === undefined)
    throw new InvalidArgumentError('expected a duration like 7d, 36h, 90m or 30s');
  return value;
}

/** The environment each program runs with (createProgram's), by its root command. */
const programEnv = new WeakMap<Command, NodeJS.ProcessEnv>();

/** Gives every command of `program` the environment it runs with (runCli's `env`, else process.env). */
export function setProgramEnv(program: Command, env: NodeJS.ProcessEnv): void {
  programEnv.set(program, env);
}

function envOf(command: Command): NodeJS.ProcessEnv {
  let root = command;
  while (root.parent) root = root.parent;
  return programEnv.get(root) ?? process.env;
}

/**
 * Runs a command's action with a context built from the global options and the program's environment (runCli's, so
 * that an embedding caller or a test gives one without touching process.env), closing connections afterwards.
 */
export function withContext<A extends unknown[]>(
  action: (context: CliContext, ...args: A) => Promise<void> | void,
): (...args: [...A, Command]) => Promise<void> {
  return async (...args) => {
    const command = args[args.length - 1] as Command;
    const context = new CliContext(command.optsWithGlobals<GlobalOptions>(), envOf(command));
    try {
      await action(context, ...(args.slice(0, -1) as A));
    } finally {
      await context.close();
    }
  };
}

export function notFound(message: string): CliError {
  return new CliError(message, 'not-found');
}

/**
 * `--target <name>`: the keyspace a command works on. Not given, it is REKEY_TARGET, else REKEY_DEFAULT_TARGET, else
 * rekey, read from the program's environment (runCli's) by targetFromEnv, not by commander's .env(), which reads
 * process.env.
 */
export function targetOption(
  description = 'the keyspace: rekey (its own table), mycelium, talos, or one of REKEY_CONFIG',
): Option {
  return new Option('--target <name>', `${description} (env: REKEY_TARGET, else REKEY_DEFAULT_TARGET; default: rekey)`);
}

/**
 * The program's preAction hook: a command with --target that was not given it takes REKEY_TARGET, else
 * REKEY_DEFAULT_TARGET, else rekey, from the environment the program runs with, like every other setting.
 */
export function targetFromEnv(_program: Command, command: Command): void {
  if (!command.options.some((option) => option.attributeName() === 'target')) return;
  if (command.getOptionValueSource('target') === 'cli') return;
  const env = envOf(command);
  if (env.REKEY_TARGET) command.setOptionValueWithSource('target', env.REKEY_TARGET, 'env');
  else command.setOptionValueWithSource('target', env.REKEY_DEFAULT_TARGET || 'rekey', 'default');
}
