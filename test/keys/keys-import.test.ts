// Issue 25: `rekey keys import` moves KEKs from environment variables into a keyring file or AWS Secrets Manager
// (moto), byte for byte: the fingerprints the registry recorded hold, and a different key under an id already there
// is refused, with nothing written.
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { SecretsManagerKeys } from '../../src/keyring/drivers/aws-secrets-manager';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { runRekey } from '../helpers/cli';
import { runCli } from '../../src/cli/program';
import { useMoto } from '../helpers/aws';
import { unwrapUnder, wrapUnder, fingerprintIn, storedIds } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-import-'));
const key = () => randomBytes(32).toString('base64url');

/** The environment's KEKs as the application holds them, and a DEK each wrapped, to read back from the store. */
async function environment(prefix: string, ids: string[], current: string) {
  const env: Record<string, string> = { [`${prefix}_CURRENT_KEK_ID`]: current };
  for (const id of ids) env[`${prefix}_KEK_${id}`] = key();
  const keys = new EnvKeyProvider(env, prefix);
  const dek = randomBytes(32);
  const wrapped: Record<string, Buffer> = {};
  for (const id of ids) wrapped[id] = await wrapUnder(keys, id, 'tenant-1', dek);
  const fingerprints: Record<string, string> = {};
  for (const id of ids) fingerprints[id] = await fingerprintIn(keys, id);
  keys.close();
  return { env, dek, wrapped, fingerprints };
}

describe('rekey keys import', () => {
  const moto = useMoto();
  const opened: { close(): void }[] = [];
  afterEach(() => opened.splice(0).forEach((store) => store.close()));
  afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

  it('Finding: REKEY_KEK_<id> into a keyring file: the same fingerprints, the current one named, mode 0600; run again, nothing changes', async () => {
    const file = path.join(scratch, `keyring-${randomUUID()}.json`);
    const { env, dek, wrapped, fingerprints } = await environment('REKEY', ['v1', 'v2'], 'v2');
    const rekey = () => runRekey(['keys', '--keyring', file, 'import'], { PATH: process.env.PATH, ...env });
    const first = await rekey();
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toBe(
      [
        `keyring file ${file} holds the KEKs of environment variables REKEY_KEK_<id>, with the same fingerprints:`,
        `  v2           ${fingerprints.v2}  imported (current)`,
        `  v1           ${fingerprints.v1}  imported`,
        'The registry trusts them by fingerprint: nothing needs rotating. Point every worker, admin API and application at this store, then remove the variables.',
        '',
      ].join('\n'),
    );
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const keyring = FileKeyring.open(file);
    opened.push(keyring);
    expect(keyring.configuredCurrent).toBe('v2');
    for (const id of ['v1', 'v2']) {
      expect(await fingerprintIn(keyring, id)).toBe(fingerprints[id]);
      expect((await unwrapUnder(keyring, id, 'tenant-1', wrapped[id]!)).equals(dek)).toBe(true);
    }
    for (const secret of [env.REKEY_KEK_v1!, env.REKEY_KEK_v2!]) expect(first.stdout).not.toContain(secret);

    const contents = fs.readFileSync(file, 'utf8');
    const again = await rekey();
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`  v1           ${fingerprints.v1}  already there`);
    expect(fs.readFileSync(file, 'utf8')).toBe(contents);
  });

  it("Finding: rekey keys import read process.env instead of the CLI's environment: runCli(argv, env), as a test or an embedding program calls it, imported the KEKs of process.env (here none) and not those of env; it imports env's, and process.env is not read", async () => {
    const file = path.join(scratch, `keyring-${randomUUID()}.json`);
    // A prefix process.env has no variable of.
    const prefix = `EMBED${randomUUID().slice(0, 8).toUpperCase()}`;
    expect(Object.keys(process.env).filter((name) => name.startsWith(prefix))).toEqual([]);
    const { env, fingerprints } = await environment(prefix, ['v1', 'v2'], 'v2');
    const code = await runCli(['keys', '--keyring', file, 'import'], { ...env, [`REKEY_ENV_PREFIX`]: prefix });
    expect(code).toBe(0);
    const keyring = FileKeyring.open(file);
    opened.push(keyring);
    expect(keyring.configuredCurrent).toBe('v2');
    for (const id of ['v1', 'v2']) expect(await fingerprintIn(keyring, id)).toBe(fingerprints[id]);
  });

  it('Finding: a different key under an id the keyring already holds is refused (exit 5), naming both fingerprints, and nothing is written', async () => {
    const file = path.join(scratch, `keyring-${randomUUID()}.json`);
    const held = FileKeyring.open(file, { create: true });
    opened.push(held);
    await generateKek(held, 'v1');
    const contents = fs.readFileSync(file, 'utf8');
    const { env, fingerprints } = await environment('REKEY', ['v1', 'v2'], 'v2');
    const refused = await runRekey(['keys', '--keyring', file, 'import'], { PATH: process.env.PATH, ...env });
    expect(refused).toEqual({
      code: 5,
      stdout: '',
      stderr: `rekey: keyring file ${file} holds another key under 'v1' (${await fingerprintIn(held, 'v1')}) than environment variables REKEY_KEK_<id> (${fingerprints.v1}): it is never overwritten, and nothing was imported; find out which key the rows under 'v1' need before going on\n`,
    });
    expect(fs.readFileSync(file, 'utf8')).toBe(contents);
  });

  it('Finding: TALOS_KEK_<id> into an AWS Secrets Manager secret (moto): the current KEK is AWSCURRENT, each is named rekey-kek-<id> with its fingerprint; again, nothing changes; another key under an id is refused', async () => {
    const secretId = `rekey/import-${randomUUID()}`;
    const { env, dek, wrapped, fingerprints } = await environment('TALOS', ['v1', 'v2'], 'v1');
    const store = { ...moto.server.env, REKEY_KEY_PROVIDER: 'aws-secrets-manager', REKEY_AWS_SECRET_ID: secretId };
    const rekey = (variables: Record<string, string>) =>
      runRekey(['keys', 'import', '--prefix', 'TALOS'], { PATH: process.env.PATH, ...store, ...variables }, 60_000);
    const first = await rekey(env);
    expect(first.code, first.stderr).toBe(0); // the AWS SDK warns on stderr that Node 20 is near its end
    expect(first.stdout).toContain(`  v1           ${fingerprints.v1}  imported (current)`);
    expect(first.stdout).toContain(`  v2           ${fingerprints.v2}  imported`);

    const keys = SecretsManagerKeys.fromEnv(store);
    opened.push(keys);
    await keys.reload();
    expect(await storedIds(keys)).toEqual(['v1', 'v2']);
    expect(keys.configuredCurrent).toBe('v1');
    for (const id of ['v1', 'v2']) {
      expect(await fingerprintIn(keys, id)).toBe(fingerprints[id]);
      expect((await unwrapUnder(keys, id, 'tenant-1', wrapped[id]!)).equals(dek)).toBe(true);
    }
    const again = await rekey(env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`  v2           ${fingerprints.v2}  already there`);
    const refused = await rekey({ ...env, TALOS_KEK_v2: key() });
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain(
      `rekey: AWS Secrets Manager secret '${secretId}' holds another key under 'v2' (${fingerprints.v2}) than environment variables TALOS_KEK_<id> (`,
    );
    await keys.reload();
    expect(await fingerprintIn(keys, 'v2')).toBe(fingerprints.v2);
  });

  it('a store that cannot be given key bytes, or no store named, is refused (exit 2) with where to import', async () => {
    const { env } = await environment('REKEY', ['v1'], 'v1');
    const unnamed = await runRekey(['keys', 'import'], { PATH: process.env.PATH, ...env });
    expect(unnamed).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'rekey: name where to import: --keyring <file> (or REKEY_KEYRING_FILE), or REKEY_KEY_PROVIDER=aws-secrets-manager with REKEY_AWS_SECRET_ID\n',
    });
  });
});
