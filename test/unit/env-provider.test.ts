import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { KeyMaterialError } from '../../src/errors';
import { unwrapUnder, wrapUnder, storedIds } from '../helpers/store-keys';

const key = () => randomBytes(32).toString('base64url');

describe('env key provider', () => {
  it("reads the gateway runbook's TALOS_ variables as they are", async () => {
    const provider = new EnvKeyProvider(
      { TALOS_KEK_v1: key(), TALOS_KEK_v2: key(), TALOS_CURRENT_KEK_ID: 'v2' },
      'TALOS',
    );
    expect(await storedIds(provider)).toEqual(['v1', 'v2']);
    expect(provider.configuredCurrent).toBe('v2');
    const dek = randomBytes(32);
    expect((await unwrapUnder(provider, 'v1', 't', await wrapUnder(provider, 'v1', 't', dek))).equals(dek)).toBe(true);
  });

  it('takes the prefix from REKEY_ENV_PREFIX, REKEY by default', async () => {
    expect(await storedIds(new EnvKeyProvider({ REKEY_KEK_a: key() }))).toEqual(['a']);
    expect(
      await storedIds(new EnvKeyProvider({ REKEY_ENV_PREFIX: 'ACME', ACME_KEK_b: key(), REKEY_KEK_a: key() })),
    ).toEqual(['b']);
  });

  it.each([
    [
      'a key of the wrong length',
      randomBytes(16).toString('base64url'),
      /TALOS_KEK_v1 .*decodes to 16 bytes \(22 characters\), not 32 bytes/,
    ],
    ['padding', `${key()}=`, /TALOS_KEK_v1 .*remove the '=' padding/],
    [
      'standard base64',
      randomBytes(32).toString('base64').replace(/=+$/, '').replace(/^./, '+'),
      /TALOS_KEK_v1 .*use base64url/,
    ],
    ['characters outside base64url', `${key().slice(0, 42)}!`, /TALOS_KEK_v1 .*outside the base64url alphabet/],
    ['a value of blanks', '   x', /TALOS_KEK_v1 .*decodes to 0 bytes/],
  ])('refuses %s and names the variable', (_what, value, message) => {
    expect(() => new EnvKeyProvider({ TALOS_KEK_v1: value }, 'TALOS')).toThrow(message);
    expect(() => new EnvKeyProvider({ TALOS_KEK_v1: value }, 'TALOS')).toThrow(KeyMaterialError);
  });

  it('an empty variable means unset (a compose file passes unset variables as empty strings)', async () => {
    const provider = new EnvKeyProvider({ TALOS_KEK_v1: key(), TALOS_KEK_v2: '', TALOS_CURRENT_KEK_ID: '' }, 'TALOS');
    expect(await storedIds(provider)).toEqual(['v1']);
    expect(provider.configuredCurrent).toBeUndefined();
    expect(() => new EnvKeyProvider({ TALOS_KEK_v1: '' }, 'TALOS')).toThrow(/no KEK in the environment/);
  });

  it("refuses an id the target's own rule forbids (Talos ids are lower-case), naming the variable", async () => {
    const talosRule = '^[a-z0-9][a-z0-9_-]{0,31}$';
    expect(() => new EnvKeyProvider({ TALOS_KEK_V2: key() }, 'TALOS', talosRule)).toThrow(
      "TALOS_KEK_V2: KEK id 'V2' does not match this target's rule ^[a-z0-9][a-z0-9_-]{0,31}$, so the application ignores it; rename the variable",
    );
    expect(await storedIds(new EnvKeyProvider({ TALOS_KEK_v2: key() }, 'TALOS', talosRule))).toEqual(['v2']);
  });

  it('refuses a current KEK id whose key is not set', () => {
    expect(() => new EnvKeyProvider({ TALOS_KEK_v1: key(), TALOS_CURRENT_KEK_ID: 'v3' }, 'TALOS')).toThrow(
      "TALOS_CURRENT_KEK_ID names 'v3', but TALOS_KEK_v3 is not set",
    );
  });

  it('refuses an environment without any KEK', () => {
    expect(() => new EnvKeyProvider({}, 'TALOS')).toThrow(/no KEK in the environment: set TALOS_KEK_<id>/);
  });

  it('refuses a malformed prefix or KEK id', () => {
    expect(() => new EnvKeyProvider({}, 'talos')).toThrow(/REKEY_ENV_PREFIX 'talos' must be upper-case/);
    expect(() => new EnvKeyProvider({ TALOS_KEK_: key() }, 'TALOS')).toThrow(/KEK id '' must be 1-64/);
  });

  it('asked for a KEK it does not hold, names the KEK and the provider', async () => {
    const provider = new EnvKeyProvider({ TALOS_KEK_v1: key() }, 'TALOS');
    await expect(wrapUnder(provider, 'v9', 't', randomBytes(32))).rejects.toThrow(
      "KEK 'v9' is not known to environment variables TALOS_KEK_<id>",
    );
  });

  it('close() zeroizes the keys it held', async () => {
    const provider = new EnvKeyProvider({ TALOS_KEK_v1: key() }, 'TALOS');
    provider.close();
    expect(await storedIds(provider)).toEqual([]);
  });
});
