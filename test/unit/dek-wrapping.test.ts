import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { kekFingerprint, unwrapDek, wrapDek, WRAPPED_DEK_BYTES } from '../../src/envelope/dek-wrapping';
import { decryptTenantData, encryptTenantData } from '../../src/envelope/tenant-data-cipher';
import { DekUnwrapError } from '../../src/errors';

const kek = randomBytes(32);
const dek = randomBytes(32);

describe('DEK wrapping', () => {
  it('a wrapped DEK unwraps to the same bytes, in the versioned 61-byte stored form', () => {
    const wrapped = wrapDek(kek, 'v1', 'tenant-a', dek);
    expect(wrapped).toHaveLength(WRAPPED_DEK_BYTES);
    expect(wrapped[0]).toBe(1);
    expect(unwrapDek(kek, 'v1', 'tenant-a', wrapped).equals(dek)).toBe(true);
  });

  it('two wraps of one DEK differ (random nonce)', () => {
    expect(wrapDek(kek, 'v1', 't', dek).equals(wrapDek(kek, 'v1', 't', dek))).toBe(false);
  });

  it("a wrapped DEK copied onto another tenant's row fails to unwrap", () => {
    const wrapped = wrapDek(kek, 'v1', 'tenant-a', dek);
    expect(() => unwrapDek(kek, 'v1', 'tenant-b', wrapped)).toThrow(DekUnwrapError);
  });

  it('a wrapped DEK relabelled with another KEK id fails to unwrap, even under the same key bytes', () => {
    const wrapped = wrapDek(kek, 'v1', 'tenant-a', dek);
    expect(() => unwrapDek(kek, 'v2', 'tenant-a', wrapped)).toThrow(
      /tenant 'tenant-a'.*KEK 'v2'.*authentication failed/,
    );
  });

  it('a wrapped DEK with one flipped bit fails to unwrap', () => {
    const wrapped = wrapDek(kek, 'v1', 'tenant-a', dek);
    wrapped[20]! ^= 0x01;
    expect(() => unwrapDek(kek, 'v1', 'tenant-a', wrapped)).toThrow(DekUnwrapError);
  });

  it('a truncated or unknown-format wrapped DEK is rejected with the reason', () => {
    const wrapped = wrapDek(kek, 'v1', 'tenant-a', dek);
    expect(() => unwrapDek(kek, 'v1', 'tenant-a', wrapped.subarray(0, 40))).toThrow(
      /ciphertext is 11 bytes, expected 32/,
    );
    wrapped[0] = 9;
    expect(() => unwrapDek(kek, 'v1', 'tenant-a', wrapped)).toThrow(/does not start with the format byte\(s\) 01/);
  });

  it('the fingerprint identifies a key and does not contain it', () => {
    const fingerprint = kekFingerprint(kek);
    expect(fingerprint).toMatch(/^kcv1:[0-9a-f]{32}$/);
    expect(kekFingerprint(Buffer.from(kek))).toBe(fingerprint);
    expect(kekFingerprint(randomBytes(32))).not.toBe(fingerprint);
    expect(fingerprint).not.toContain(kek.toString('hex').slice(0, 16));
  });
});

describe('tenant data ciphertexts', () => {
  it("round-trip as 'v2:' base64url and are bound to the tenant", () => {
    const ciphertext = encryptTenantData(dek, 'tenant-a', 'webhook secret');
    expect(ciphertext).toMatch(/^v2:[A-Za-z0-9_-]+$/);
    expect(decryptTenantData(dek, 'tenant-a', ciphertext).toString()).toBe('webhook secret');
    expect(() => decryptTenantData(dek, 'tenant-b', ciphertext)).toThrow(/tenant 'tenant-b'.*authentication failed/);
    expect(() => decryptTenantData(dek, 'tenant-a', 'v1:abc')).toThrow(/does not start with 'v2:'/);
  });
});
