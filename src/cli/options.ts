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

/** Runs a command's action with a context built from the global options, closing connections afterwards. */
export function withContext<A extends unknown[]>(
  action: (context: CliContext, ...args: A) => Promise<void> | void,
): (...args: [...A, Command]) => Promise<void> {
  return async (...args) => {
    const command = args[args.length - 1] as Command;
    const context = new CliContext(command.optsWithGlobals<GlobalOptions>());
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

/** `--target <name>`: the keyspace a command works on (REKEY_TARGET, else REKEY_DEFAULT_TARGET, else rekey). */
export function targetOption(
  description = 'the keyspace: rekey (its own table), mycelium, talos, or one of REKEY_CONFIG',
): Option {
  return new Option('--target <name>', description)
    .env('REKEY_TARGET')
    .default(process.env.REKEY_DEFAULT_TARGET || 'rekey');
}
