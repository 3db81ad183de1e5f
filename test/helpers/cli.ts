import { execFile } from 'node:child_process';
import path from 'node:path';
import { projectRoot } from '../../src/project-paths';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The built `rekey` CLI, run as an operator runs it with exactly `env`; never throws, returns what they would see. */
export function runRekey(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 90_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(projectRoot, 'dist', 'src', 'starter.js'), ...args],
      { env, timeout: timeoutMs },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/**
 * The built `rekey` CLI against one Temporal server and task queue (`--address`, `--task-queue` before `args`), as an
 * operator runs it with PATH and `env`; never throws, returns what they would see.
 */
export function runRekeyAt(
  address: string,
  taskQueue: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs?: number,
): Promise<CliResult> {
  return runRekey(
    ['--address', address, '--task-queue', taskQueue, ...args],
    { PATH: process.env.PATH, ...env },
    timeoutMs,
  );
}
