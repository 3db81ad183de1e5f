import { execFile } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';

describe('chaos (small run, as CI guards it)', () => {
  it('a worker killed with SIGKILL mid-rewrap loses nothing: 10,000 tenants, one kill', async () => {
    const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(
        process.execPath,
        [
          path.join(projectRoot, 'dist/bench/chaos.js'),
          '--tenants',
          '10000',
          '--scenarios',
          'worker-kill',
          '--kills',
          '1',
        ],
        { timeout: 170_000 },
        (error, out) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout: out }),
      ),
    );
    expect(stdout).toMatch(/^\| worker-kill \| 1 × SIGKILL of the worker \| 10,000 \| 0 \(/m);
    expect(code).toBe(0);
  }, 180_000);
});
