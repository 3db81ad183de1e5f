import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { heldIds, keyringOver, resolveKek, fingerprintIn } from '../helpers/store-keys';
import { MyceliumTokenSecrets, myceliumKek } from '../../src/keyring/drivers/mycelium-token-secret';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { MYCELIUM_PRESET } from '../../src/targets/presets';
import { KekFingerprintMismatchError, KekNotHeldError, KeyMaterialError } from '../../src/errors';

const sources = MYCELIUM_PRESET.keys as { provider: 'mycelium-token-secret'; current: never; old: never };

describe("Mycelium's KEKs from token_secret UUIDs", () => {
  it('derives the KEK as SHA-256 of the UUID bytes: the check value of seed-systems.md', () => {
    expect(myceliumKek('550e8400-e29b-41d4-a716-446655440000', 'MYC_TOKEN_SECRET').toString('hex')).toBe(
      'cee82307e6ad54d90eef435cad081ccf590f5cc3a22bb5ef3941091d781fcd14',
    );
  });

  it('a rotation names the generations: from is MYC_OLD_TOKEN_SECRET, to is MYC_TOKEN_SECRET, which is current', async () => {
    const [oldSecret, newSecret] = [randomUUID(), randomUUID()];
    const keys = new MyceliumTokenSecrets(sources, { MYC_OLD_TOKEN_SECRET: oldSecret, MYC_TOKEN_SECRET: newSecret });
    const keyring = keyringOver(keys);
    expect(await heldIds(keyring)).toEqual([]);
    keyring.nameRotation('1', '2');
    expect(await heldIds(keyring)).toEqual(['1', '2']);
    expect(await keyring.configuredCurrent()).toBe('2');
    const kek = (uuid: string) =>
      createHash('sha256')
        .update(Buffer.from(uuid.replace(/-/g, ''), 'hex'))
        .digest();
    expect(await keyring.fingerprintOf('1')).toBe(kekFingerprint(kek(oldSecret)));
    expect(await keyring.fingerprintOf('2')).toBe(kekFingerprint(kek(newSecret)));
    keys.close();
  });

  it('reads the current secret from a file the configuration names', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'myc-')), 'token_secret');
    const secret = randomUUID();
    fs.writeFileSync(file, `${secret}\n`);
    const keys = new MyceliumTokenSecrets({ current: { file }, old: { env: 'MYC_OLD_TOKEN_SECRET' } }, {});
    const keyring = keyringOver(keys);
    keyring.nameRotation('1', '2');
    expect(await heldIds(keyring)).toEqual(['2']); // no old secret given: generation 1 is not held
    await expect(keyring.cipherFor('1', undefined)).rejects.toThrow(/set MYC_OLD_TOKEN_SECRET to its token_secret/);
  });

  it('one line naming the variable for a malformed UUID or a missing secret, never the value', () => {
    const refuse = (env: NodeJS.ProcessEnv) => {
      try {
        new MyceliumTokenSecrets(sources, env);
      } catch (err) {
        expect(err).toBeInstanceOf(KeyMaterialError);
        return (err as Error).message;
      }
      throw new Error('expected a refusal');
    };
    expect(refuse({ MYC_TOKEN_SECRET: randomUUID(), MYC_OLD_TOKEN_SECRET: 'hunter2-not-a-uuid' })).toBe(
      "MYC_OLD_TOKEN_SECRET must hold the gateway's token_secret, a UUID such as 550e8400-e29b-41d4-a716-446655440000: it holds 18 characters that are not one",
    );
    expect(refuse({})).toBe("MYC_TOKEN_SECRET is not set: set it to the gateway's current token_secret (a UUID)");
  });
});

describe('keys are trusted by fingerprint, not by name', () => {
  const key = () => randomBytes(32).toString('base64url');

  it('a key under the registered name with another fingerprint is refused, naming both fingerprints', async () => {
    const mine = new EnvKeyProvider({ T_KEK_v2: key() }, 'T');
    const registered = { fingerprint: 'kcv1:00000000000000000000000000000000' };
    await expect(resolveKek(mine, 'v2', registered)).rejects.toThrow(KekFingerprintMismatchError);
    await expect(resolveKek(mine, 'v2', registered)).rejects.toThrow(
      `KEK 'v2' in the key provider has fingerprint ${await fingerprintIn(mine, 'v2')}, but the registry recorded kcv1:00000000000000000000000000000000`,
    );
  });

  it('the registered key is found by its fingerprint whatever this process calls it, and handed out as a copy', async () => {
    const secret = randomUUID();
    const keys = new MyceliumTokenSecrets(sources, { MYC_TOKEN_SECRET: secret });
    const fingerprint = kekFingerprint(myceliumKek(secret, 'test'));
    const resolved = await resolveKek(keys, '2', { fingerprint });
    expect(resolved.key.equals(myceliumKek(secret, 'test'))).toBe(true);
    resolved.key.fill(0);
    expect((await resolveKek(keys, '2', { fingerprint })).key.equals(myceliumKek(secret, 'test'))).toBe(true);
    await expect(resolveKek(keys, '1', { fingerprint: 'kcv1:ffffffffffffffffffffffffffffffff' })).rejects.toThrow(
      KekNotHeldError,
    );
  });
});
