import { execFile } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';

describe('the demo (the README main command, built)', () => {
  it('rotates while the simulated application works, and ends with a clean report and a Web UI address', async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        [path.join(projectRoot, 'dist/src/demo.js')],
        {
          env: {
            PATH: process.env.PATH,
            HOME: process.env.HOME,
            REKEY_DEMO_TENANTS: '20000',
            // Any free ports: the demo says which it got.
            REKEY_DEMO_PORT: '0',
            REKEY_DEMO_UI_PORT: '0',
          },
          timeout: 170_000,
        },
        (error, out, err) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout: out, stderr: err }),
      ),
    );
    expect(stderr.split('\n').filter((l) => l.startsWith('rekey demo:'))).toEqual([]);
    expect(code).toBe(0);
    expect(stdout).toContain("rotation completed: 'v1' → 'v2'");
    expect(stdout).toMatch(/application during the run: \d+ reads, \d+ DEK writes, \d+ new tenants, 0 errors/);
    expect(stdout).toContain('tenant data that still decrypts: 2000/2000');
    expect(stdout).toMatch(/old KEK 'v1': retired at /);
    const ui = /^Temporal dev server on 127\.0\.0\.1:\d+, Web UI on (http:\/\/127\.0\.0\.1:\d+)$/m.exec(stdout)?.[1];
    expect(ui, stdout).toBeDefined();
    expect(stdout).toContain(`watch it live: ${ui}/namespaces/default/workflows/`);
    expect(stdout).toContain(`Web UI: ${ui}/namespaces/default/workflows`);
  }, 180_000);
});
