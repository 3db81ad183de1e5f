// Which store a process's own keys are in is decided by one rule for every rekey process (src/config.ts,
// keyProviderOf): REKEY_KEY_PROVIDER when set, else the keyring file when REKEY_KEYRING_FILE is set, else the
// environment. Here the built CLI's `rekey keys list` against the store the worker opens (worker.ts: loadConfig, then
// openStoreDriver), with KEKs in both the environment (v1) and a keyring file (v9) so that each names its store.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config';
import { openStoreDriver } from '../../src/keyring/open';
import { runRekey } from '../helpers/cli';
import { writeKeyringFile } from '../helpers/keyring';
import { storedIds } from '../helpers/store-keys';

describe("the process's key store: one rule for the worker and rekey keys", () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-store-rule-'));
  afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));
  const keyringFile = path.join(scratch, 'keyring.json');
  writeKeyringFile(keyringFile, 'v9', { v9: randomBytes(32) });
  const base = {
    PATH: process.env.PATH,
    DATABASE_URL: 'postgres://rekey@127.0.0.1:1/unused',
    REKEY_KEK_v1: randomBytes(32).toString('base64url'),
    REKEY_CURRENT_KEK_ID: 'v1',
  };

  /** The KEK ids of the store the worker opens with `env`, as worker.ts opens it. */
  async function workerIds(env: NodeJS.ProcessEnv): Promise<string[]> {
    const config = loadConfig(env);
    const keys = openStoreDriver({ provider: config.REKEY_KEY_PROVIDER, keyringFile: config.REKEY_KEYRING_FILE }, env);
    try {
      await keys.reload();
      return await storedIds(keys);
    } finally {
      keys.close();
    }
  }

  /** The KEK ids `rekey keys list` prints with `env`. */
  async function cliIds(env: NodeJS.ProcessEnv): Promise<string[]> {
    const listed = await runRekey(['--json', 'keys', 'list'], env);
    expect(listed.code, listed.stderr).toBe(0);
    return (JSON.parse(listed.stdout) as { kekId: string }[]).map((k) => k.kekId).sort();
  }

  it.each([
    ['REKEY_KEY_PROVIDER unset, REKEY_KEYRING_FILE set: the keyring file', { REKEY_KEYRING_FILE: keyringFile }, ['v9']],
    ['REKEY_KEY_PROVIDER and REKEY_KEYRING_FILE unset: the environment', {}, ['v1']],
    [
      'REKEY_KEY_PROVIDER=env with REKEY_KEYRING_FILE set: the environment',
      { REKEY_KEY_PROVIDER: 'env', REKEY_KEYRING_FILE: keyringFile },
      ['v1'],
    ],
    [
      'REKEY_KEY_PROVIDER=file: the keyring file',
      { REKEY_KEY_PROVIDER: 'file', REKEY_KEYRING_FILE: keyringFile },
      ['v9'],
    ],
  ] as const)('Finding: the worker and rekey keys read the same store: %s', async (_, settings, ids) => {
    const env = { ...base, ...settings };
    expect((await workerIds(env)).sort()).toEqual(ids);
    expect(await cliIds(env)).toEqual(ids);
  });
});
