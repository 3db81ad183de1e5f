import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, REKEY_DEK_FORMAT, TALOS_SECRET_FORMAT } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { wrapDek } from '../../src/envelope/dek-wrapping';
import { FormatError, UnreadableValueError } from '../../src/errors';

// Fixed vectors made with Python's `cryptography` (AESGCM), not with Node, from the facts in
// ../shared/seed-systems.md; every one with the nonce 000102…0b.
const NONCE = Buffer.from('000102030405060708090a0b', 'hex');
const DEK = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

const mycelium = compileFormat(MYCELIUM_DEK_FORMAT);
const talos = compileFormat(TALOS_SECRET_FORMAT);
const rekey = compileFormat(REKEY_DEK_FORMAT);

describe("Mycelium's wrapped DEK: 'v2:' + standard base64, bound to the tenant UUID's 16 bytes", () => {
  // KEK = SHA-256 of the token_secret UUID's raw bytes (the check value of seed-systems.md).
  const kek = Buffer.from('cee82307e6ad54d90eef435cad081ccf590f5cc3a22bb5ef3941091d781fcd14', 'hex');
  const row = {
    id: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
    encrypted_dek: 'v2:AAECAwQFBgcICQoLrQ1VteOtjYWgrTv+gQ45iNT+BKF8oAHZU33RJflDJD4y8AosBDEpFdeuHNl39gZm',
  };

  it('opens the fixed vector to the DEK', () => {
    expect(mycelium.open(kek, row, '1').equals(DEK)).toBe(true);
  });

  it('seals to the same text with the same nonce (the generation label plays no part)', () => {
    expect(mycelium.seal(kek, DEK, row, '2', NONCE)).toEqual([row.encrypted_dek]);
  });

  it("refuses a value without the 'v2:' prefix, as Mycelium does", () => {
    expect(mycelium.check({ ...row, encrypted_dek: row.encrypted_dek.slice(3) })).toBe(
      "encrypted_dek does not start with 'v2:'",
    );
  });

  it("does not open another tenant's DEK copied onto this row", () => {
    expect(() => mycelium.open(kek, { ...row, id: '00000000-0000-0000-0000-000000000000' }, '1')).toThrow(
      /authentication failed/,
    );
  });

  it('names a NULL DEK and a malformed one', () => {
    expect(mycelium.check({ ...row, encrypted_dek: null })).toBe('encrypted_dek is NULL');
    expect(mycelium.check({ ...row, encrypted_dek: 'v2:not base64!' })).toBe('encrypted_dek is not base64');
    expect(mycelium.check({ ...row, encrypted_dek: 'v2:AAECAwQF' })).toBe('encrypted_dek is 6 bytes, too short');
  });
});

describe("Talos's secret: three base64url columns, bound to talos.secret.v1:<id>, or to the name on older rows", () => {
  const kek = Buffer.from('ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8', 'base64url');
  const id = '3f2a8c1e-5b7d-4e9a-8c6f-1d2e3f4a5b6c';
  const v1Row = {
    id,
    name: 'openai-prod',
    ciphertext: 'LzlwyyNDjsGMyPv1EkZoCytJiAYJdcN3Q2W60NDtpvZDrmNPaGsxk50Dg4I',
    nonce: 'AAECAwQFBgcICQoL',
    tag: 'TYkFJv-NEIvKcXNXvrNUzA',
    aad: 'dGFsb3Muc2VjcmV0LnYxOjNmMmE4YzFlLTViN2QtNGU5YS04YzZmLTFkMmUzZjRhNWI2Yw',
  };
  const nameRow = {
    id,
    name: 'openai-prod',
    ciphertext: 'JA',
    nonce: 'AAECAwQFBgcICQoL',
    tag: 'EaG787QKBJKXsOT32kTEKg',
  };

  it('opens a v1-bound secret of any length', () => {
    expect(talos.open(kek, v1Row, 'v1').toString()).toBe('sk-live-0123456789abcdefghijklmnopqrstuvwxyz');
  });

  it('opens an older secret bound to its name, with no aad column', () => {
    expect(talos.open(kek, nameRow, 'v1').toString()).toBe('x');
  });

  it('always writes the v1 binding and stores it in aad, base64url without padding', () => {
    const plaintext = Buffer.from('sk-live-0123456789abcdefghijklmnopqrstuvwxyz');
    expect(talos.writeColumns).toEqual(['ciphertext', 'nonce', 'tag', 'aad']);
    expect(talos.seal(kek, plaintext, nameRow, 'v2', NONCE)).toEqual([
      v1Row.ciphertext,
      v1Row.nonce,
      v1Row.tag,
      v1Row.aad,
    ]);
  });

  it('round-trips an empty secret and a 10 KiB one', () => {
    for (const plaintext of [Buffer.alloc(0), randomBytes(10_240)]) {
      const [ciphertext, nonce, tag, aad] = talos.seal(kek, plaintext, v1Row, 'v2', randomBytes(12));
      expect(talos.open(kek, { ...v1Row, ciphertext, nonce, tag, aad }, 'v2').equals(plaintext)).toBe(true);
    }
  });

  it('refuses a truncated tag instead of letting OpenSSL accept it', () => {
    expect(talos.check({ ...v1Row, tag: v1Row.tag.slice(0, 6) })).toBe('tag is 4 bytes, not 16');
    expect(() => talos.open(kek, { ...v1Row, tag: v1Row.tag.slice(0, 6) }, 'v1')).toThrow(UnreadableValueError);
  });

  it('fails authentication under both bindings with another key', () => {
    expect(() => talos.open(randomBytes(32), v1Row, 'v1')).toThrow(
      'authentication failed under each of its 2 associated-data bindings',
    );
  });
});

describe("rekey's own wrapped DEK: bytea 0x01 ‖ nonce ‖ ciphertext ‖ tag, bound to tenant and KEK id", () => {
  const kek = Buffer.from(Array.from({ length: 32 }, (_, i) => 64 + i));
  const stored = Buffer.from(
    '01000102030405060708090a0b3a046e7b738942a7ca1b8ac9b4e0c2b493d53f1a7859bb44f639f28d5dac77410f2f03167cfc58cf7fb6274aae3872e5',
    'hex',
  );
  const row = { tenant_id: 'tenant-42', wrapped_dek: stored };

  it('opens the fixed vector, and only under the KEK id it was wrapped for', () => {
    expect(rekey.open(kek, row, 'v1').equals(DEK)).toBe(true);
    expect(() => rekey.open(kek, row, 'v2')).toThrow(/authentication failed/);
  });

  it('seals to the same bytes, which are also what the envelope API writes', () => {
    expect(rekey.seal(kek, DEK, row, 'v1', NONCE)).toEqual([stored]);
    expect(wrapDek(kek, 'v1', 'tenant-42', DEK, NONCE).equals(stored)).toBe(true);
  });

  it('refuses another format byte and a DEK of the wrong length; tells the KMS (0x02) and Transit (0x03) forms apart', () => {
    expect(rekey.check({ ...row, wrapped_dek: Buffer.concat([Buffer.from([4]), stored.subarray(1)]) })).toBe(
      'wrapped_dek does not start with the format byte(s) 01',
    );
    // 0x03 is the Vault Transit form: 'vault:v<n>:' and base64 after it, never opened with key bytes.
    expect(rekey.check({ ...row, wrapped_dek: Buffer.concat([Buffer.from([3]), stored.subarray(1)]) })).toBe(
      'wrapped_dek is not a Transit ciphertext (vault:v<n>:<base64>)',
    );
    const transitForm = { ...row, wrapped_dek: Buffer.from('\x03vault:v2:AAAA', 'latin1') };
    expect(rekey.check(transitForm)).toBeUndefined();
    expect(() => rekey.open(kek, transitForm, 'v1')).toThrow(/wrapped by Vault Transit/);
    // 0x02 is the KMS form: well-formed, and never opened with key bytes.
    const kmsForm = { ...row, wrapped_dek: Buffer.concat([Buffer.from([2]), stored.subarray(1)]) };
    expect(rekey.check(kmsForm)).toBeUndefined();
    expect(() => rekey.open(kek, kmsForm, 'v1')).toThrow(/wrapped by AWS KMS/);
    expect(rekey.check({ ...row, wrapped_dek: stored.subarray(0, 60) })).toBe('ciphertext is 31 bytes, expected 32');
  });
});

describe('format descriptions are checked when compiled', () => {
  it('needs an associated-data recipe', () => {
    expect(() => compileFormat({ ...REKEY_DEK_FORMAT, aad: { read: [] } })).toThrow(FormatError);
  });

  it('needs hex for a bytea prefix', () => {
    expect(() =>
      compileFormat({ ...REKEY_DEK_FORMAT, value: { ...REKEY_DEK_FORMAT.value, prefix: 'v2:' } as never }),
    ).toThrow("value.prefix 'v2:' must be hex bytes for a bytea column");
  });
});
