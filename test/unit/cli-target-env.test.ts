// The CLI reads every setting from the environment it is given (runCli's `env`: an embedding program's, a test's),
// never from process.env: --target's REKEY_TARGET and REKEY_DEFAULT_TARGET included.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { runCli } from '../../src/cli/program';

/** Runs the CLI in this process with exactly `env`; its exit code and what it wrote to stderr. */
async function rekey(argv: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  let stderr = '';
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += chunk.toString();
    return true;
  });
  try {
    return { code: await runCli(argv, env), stderr };
  } finally {
    spy.mockRestore();
  }
}

describe("--target from the CLI's environment", () => {
  // A database URL is checked for its form only: no command here gets as far as connecting.
  const base = { PATH: process.env.PATH, DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none' };
  afterEach(() => vi.restoreAllMocks());

  it.each([
    ['REKEY_TARGET', 'embedtarget'],
    ['REKEY_DEFAULT_TARGET', 'embeddefault'],
  ])(
    "Finding: --target read %s from process.env (commander's .env()), not from the environment runCli was given; a target named there is the one the command works on",
    async (variable, target) => {
      expect(process.env.REKEY_TARGET).toBeUndefined();
      expect(process.env.REKEY_DEFAULT_TARGET).toBeUndefined();
      const { code, stderr } = await rekey(['--json', 'kek-status'], { ...base, [variable]: target });
      expect({ code, error: (JSON.parse(stderr) as { error: string; message: string }).error }).toEqual({
        code: 2,
        error: 'bad_request',
      });
      expect(stderr).toContain(`'${target}'`);
    },
  );

  it('--target given on the command line wins over REKEY_TARGET', async () => {
    const { code, stderr } = await rekey(['--json', 'kek-status', '--target', 'fromline'], {
      ...base,
      REKEY_TARGET: 'fromenv',
    });
    expect(code).toBe(2);
    expect(stderr).toContain("'fromline'");
    expect(stderr).not.toContain('fromenv');
  });
});
