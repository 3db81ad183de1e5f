import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';

const setupScript = path.join(projectRoot, 'scripts', 'setup.mjs');
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-prereq-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** Runs the setup on an empty cache, so it must find (or miss) each tool for real. */
function runSetup(step: string, env: NodeJS.ProcessEnv) {
  const cacheDir = fs.mkdtempSync(path.join(scratch, 'cache-'));
  const result = spawnSync(process.execPath, [setupScript, '--only', step], {
    encoding: 'utf8',
    env: { HOME: os.homedir(), REKEY_CACHE_DIR: cacheDir, REKEY_SETUP_QUIET: '1', ...env },
    timeout: 60_000,
  });
  return { status: result.status, stderr: result.stderr.trim() };
}

/** A PATH holding only the named tools, linked from where this machine has them. */
function pathWith(...tools: string[]): string {
  const dir = fs.mkdtempSync(path.join(scratch, 'bin-'));
  for (const tool of tools) {
    const found = (process.env.PATH ?? '')
      .split(':')
      .map((d) => path.join(d, tool))
      .find((p) => fs.existsSync(p));
    if (!found) throw new Error(`${tool} is needed on PATH to run this test`);
    fs.symlinkSync(found, path.join(dir, tool));
  }
  return dir;
}

function expectOneLine(stderr: string, pattern: RegExp) {
  expect(stderr.split('\n')).toHaveLength(1);
  expect(stderr).toMatch(/^rekey setup: /);
  expect(stderr).toMatch(pattern);
  expect(stderr).not.toMatch(/\n\s+at /);
}

describe('setup names the missing prerequisite in one line', () => {
  it('without Go it says to install Go', () => {
    const { status, stderr } = runSetup('temporal-cli', { PATH: pathWith() });
    expect(status).toBe(1);
    expectOneLine(stderr, /Go not found on PATH: install Go >= 1\.25/);
  });

  it('without Python 3 it says to install it (moto, the AWS server of the tests, runs on it)', () => {
    const { status, stderr } = runSetup('moto', { PATH: pathWith() });
    expect(status).toBe(1);
    expectOneLine(stderr, /Python 3 not found on PATH: install Python >= 3\.10 with venv/);
  });

  it('with a Python older than 3.10 it says which version is needed', () => {
    const bin = fs.mkdtempSync(path.join(scratch, 'oldpython-'));
    fs.writeFileSync(path.join(bin, 'python3'), '#!/bin/sh\necho 3.8\n', { mode: 0o755 });
    const { status, stderr } = runSetup('moto', { PATH: bin });
    expect(status).toBe(1);
    expectOneLine(stderr, /Python 3\.8 is too old: moto \(the AWS server the tests use\) needs Python >= 3\.10/);
  });

  it('with a Go older than 1.25 it says which version is needed', () => {
    const bin = fs.mkdtempSync(path.join(scratch, 'oldgo-'));
    fs.writeFileSync(path.join(bin, 'go'), '#!/bin/sh\necho go1.21.0\n', { mode: 0o755 });
    const { status, stderr } = runSetup('temporal-cli', { PATH: bin });
    expect(status).toBe(1);
    expectOneLine(stderr, /Go 1\.21 is too old: temporal CLI 1\.5\.1 needs Go >= 1\.25/);
  });

  it('when the Go module proxy cannot be reached it says so', () => {
    const { status, stderr } = runSetup('temporal-cli', {
      PATH: pathWith('go'),
      GOPROXY: 'off',
      GOMODCACHE: fs.mkdtempSync(path.join(scratch, 'gomod-')),
      GOCACHE: path.join(os.homedir(), '.cache', 'go-build'),
    });
    expect(status).toBe(1);
    expectOneLine(
      stderr,
      /could not download github\.com\/temporalio\/cli@v1\.5\.1 \(is the Go module proxy reachable\? GOPROXY=off\)/,
    );
  });

  it.each([
    [
      'vault',
      /could not download github\.com\/hashicorp\/vault@v1\.19\.5 \(is the Go module proxy reachable\? GOPROXY=off\)/,
    ],
    [
      'tctl',
      /could not download github\.com\/temporalio\/tctl@v1\.18\.0 \(is the Go module proxy reachable\? GOPROXY=off\)/,
    ],
  ])('when the Go module proxy cannot be reached the %s step says so', (step, message) => {
    const { status, stderr } = runSetup(step, {
      PATH: pathWith('go'),
      GOPROXY: 'off',
      GOMODCACHE: fs.mkdtempSync(path.join(scratch, 'gomod-')),
      GOCACHE: path.join(os.homedir(), '.cache', 'go-build'),
    });
    expect(status).toBe(1);
    expectOneLine(stderr, message);
  });

  it('without Go the vault and tctl steps say to install Go, naming what it builds', () => {
    expectOneLine(
      runSetup('vault', { PATH: pathWith() }).stderr,
      /Go not found on PATH: install Go >= 1\.24 .*to build Vault 1\.19\.5/,
    );
    expectOneLine(
      runSetup('tctl', { PATH: pathWith() }).stderr,
      /Go not found on PATH: install Go >= 1\.18 .*to build tctl 1\.18\.0/,
    );
  });

  it('without Java it says to install a JDK', () => {
    const { status, stderr } = runSetup('test-server', { PATH: pathWith('mvn') });
    expect(status).toBe(1);
    expectOneLine(stderr, /Java not found on PATH: install a JDK 17 or newer/);
  });

  it('without Maven it says to install Maven', () => {
    const { status, stderr } = runSetup('test-server', { PATH: pathWith('java') });
    expect(status).toBe(1);
    expectOneLine(stderr, /Maven not found on PATH: install Maven 3/);
  });

  it('without PostgreSQL server binaries it says to install them or set DATABASE_URL', () => {
    const { status, stderr } = runSetup('postgres', {
      PATH: pathWith(),
      REKEY_PG_BIN: path.join(scratch, 'no-such-dir'),
    });
    expect(status).toBe(1);
    expectOneLine(stderr, /PostgreSQL server binaries not found: install PostgreSQL 15\+.*or set DATABASE_URL/);
  });

  it('when the PostgreSQL port is taken by another program it names the port and the way out', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const { status, stderr } = runSetup('postgres', {
        PATH: process.env.PATH,
        REKEY_PG_PORT: String(port),
        REKEY_PG_DATA: path.join(scratch, `pgdata-${port}`),
      });
      expect(status).toBe(1);
      expectOneLine(stderr, new RegExp(`port ${port} is taken by another program: set REKEY_PG_PORT`));
    } finally {
      blocker.close();
    }
  });

  it('an unknown step is refused with the list of steps', () => {
    const { status, stderr } = runSetup('docker', { PATH: pathWith() });
    expect(status).toBe(1);
    expectOneLine(stderr, /unknown step 'docker': choose from npm, temporal-cli, test-server, postgres/);
  });
});
