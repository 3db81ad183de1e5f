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

  it('a Mycelium-format target loses nothing to a SIGKILL of the worker mid-rewrap while the gateway reads, rewrites and onboards: every DEK opens under the new token_secret alone (fixture code)', async () => {
    const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(
        process.execPath,
        [
          path.join(projectRoot, 'dist/bench/chaos.js'),
          '--tenants',
          '1000',
          '--scenarios',
          'mycelium',
          '--kills',
          '1',
          // The PostgreSQL cluster is shared with the other test files: `npm run chaos` restarts it, a test does not.
          '--no-postgres-restart',
        ],
        { timeout: 170_000 },
        (error, out) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout: out }),
      ),
    );
    expect(stdout).toMatch(
      /^\| mycelium \| 1 × SIGKILL of the worker mid-rewrap; the gateway live: [1-9]\d* reads, [1-9]\d* bot tokens rewritten, \d+ tenants onboarded \| [\d,]+ \| 0 \(/m,
    );
    expect(code).toBe(0);
  }, 180_000);
});
