import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-go-cache-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

describe('the Go builds are cached by version in the tool cache', () => {
  it('once built, the vault and tctl steps need neither Go nor the module proxy: they answer with the cached binaries', () => {
    const toolchain = inject('toolchain');
    expect(toolchain.vault).toBe(path.join(toolchain.cacheDir, 'vault-1.19.5', 'vault'));
    expect(toolchain.tctl).toBe(path.join(toolchain.cacheDir, 'tctl-1.18.0', 'tctl'));

    const emptyPath = fs.mkdtempSync(path.join(scratch, 'bin-'));
    const result = spawnSync(
      process.execPath,
      [path.join(projectRoot, 'scripts', 'setup.mjs'), '--only', 'vault,tctl'],
      {
        encoding: 'utf8',
        // The same tool cache as this run's; no go on the PATH, and no module proxy to download from.
        env: { HOME: os.homedir(), PATH: emptyPath, GOPROXY: 'off', REKEY_CACHE_DIR: toolchain.cacheDir },
        timeout: 60_000,
      },
    );
    // Nothing built, nothing refused: the only line is the setup's last.
    expect(result.stderr.trim()).toMatch(/^setup: ready in [\d.]+ s$/);
    expect(result.status).toBe(0);

    const manifest = JSON.parse(fs.readFileSync(path.join(projectRoot, '.toolchain.json'), 'utf8')) as {
      vault: string;
      tctl: string;
    };
    expect({ vault: manifest.vault, tctl: manifest.tctl }).toEqual({ vault: toolchain.vault, tctl: toolchain.tctl });
  });
});
