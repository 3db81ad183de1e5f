import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { testAddon } from '../helpers/native-addon';
import { inject } from 'vitest';
import { gcmOpen, gcmSeal, loadAesGcmBackend, nativeSchedule, type AeadKey } from '../../src/crypto/aes-gcm';
import { ConfigError } from '../../src/errors';

const hex = (text: string) => Buffer.from(text.replace(/\s/g, ''), 'hex');

// The published AES-256 GCM test cases (McGrew and Viega, "The Galois/Counter Mode of Operation", test cases 13, 14
// and 16; the same in NIST's GCM validation suite).
const VECTORS = [
  {
    name: 'case 13',
    key: '00'.repeat(32),
    iv: '00'.repeat(12),
    aad: '',
    pt: '',
    ct: '',
    tag: '530f8afbc74536b9a963b4f1c4cb738b',
  },
  {
    name: 'case 14',
    key: '00'.repeat(32),
    iv: '00'.repeat(12),
    aad: '',
    pt: '00'.repeat(16),
    ct: 'cea7403d4d606b6e074ec5d3baf39d18',
    tag: 'd0d1c8a799996bf0265b98b5d48ab919',
  },
  {
    name: 'case 16',
    key: 'feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308',
    iv: 'cafebabefacedbaddecaf888',
    aad: 'feedfacedeadbeeffeedfacedeadbeefabaddad2',
    pt:
      'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72' +
      '1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39',
    ct:
      '522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa' +
      '8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662',
    tag: '76fc6ece0f4e1768cddf8853bb2d551b',
  },
];

describe('AES-256-GCM: the native addon and Node give the same bytes', () => {
  for (const v of VECTORS) {
    it(`published vector (${v.name}), both ways, on both`, () => {
      const native = nativeSchedule(testAddon(), hex(v.key));
      for (const key of [hex(v.key), native] as AeadKey[]) {
        const sealed = gcmSeal(key, hex(v.iv), hex(v.pt), hex(v.aad));
        expect(sealed.ciphertext.toString('hex')).toBe(v.ct);
        expect(sealed.tag.toString('hex')).toBe(v.tag);
        expect(gcmOpen(key, hex(v.iv), hex(v.ct), hex(v.tag), hex(v.aad))?.toString('hex')).toBe(v.pt);
        const forged = hex(v.tag);
        forged[0]! ^= 1;
        expect(gcmOpen(key, hex(v.iv), hex(v.ct), forged, hex(v.aad))).toBeUndefined();
      }
      native.release();
    });
  }

  it("what one seals the other opens, over random keys, sizes and associated data, and both match OpenSSL's own", () => {
    const gcm = testAddon();
    for (let i = 0; i < 300; i++) {
      const key = randomBytes(32);
      const nonce = randomBytes(12);
      const plaintext = randomBytes(i % 97);
      const aad = randomBytes((i * 7) % 61);
      const native = nativeSchedule(gcm, key);
      const bySchedule = gcmSeal(native, nonce, plaintext, aad);
      const byNode = gcmSeal(key, nonce, plaintext, aad);
      expect(bySchedule.ciphertext.equals(byNode.ciphertext) && bySchedule.tag.equals(byNode.tag)).toBe(true);
      const openssl = createCipheriv('aes-256-gcm', key, nonce);
      openssl.setAAD(aad);
      expect(Buffer.concat([openssl.update(plaintext), openssl.final()]).equals(byNode.ciphertext)).toBe(true);
      expect(gcmOpen(native, nonce, byNode.ciphertext, byNode.tag, aad)?.equals(plaintext)).toBe(true);
      const decipher = createDecipheriv('aes-256-gcm', key, nonce);
      decipher.setAAD(aad);
      decipher.setAuthTag(bySchedule.tag);
      expect(Buffer.concat([decipher.update(bySchedule.ciphertext), decipher.final()]).equals(plaintext)).toBe(true);
      // Other associated data, or another key: refused by both.
      const other = Buffer.concat([aad, Buffer.from([1])]);
      expect(gcmOpen(native, nonce, byNode.ciphertext, byNode.tag, other)).toBeUndefined();
      expect(gcmOpen(randomBytes(32), nonce, bySchedule.ciphertext, bySchedule.tag, aad)).toBeUndefined();
      native.release();
    }
  });

  it('a released schedule refuses to work; a wrong-sized key, nonce or tag is refused, not truncated', () => {
    const gcm = testAddon();
    const native = nativeSchedule(gcm, randomBytes(32));
    native.release();
    expect(() => native.seal(randomBytes(12), Buffer.alloc(32), Buffer.alloc(0))).toThrow(/released/);
    expect(() => nativeSchedule(gcm, randomBytes(16))).toThrow(/32/);
    const live = nativeSchedule(gcm, randomBytes(32));
    expect(() => live.seal(randomBytes(8), Buffer.alloc(32), Buffer.alloc(0))).toThrow(/nonce is 8 bytes/);
    expect(() => live.open(randomBytes(12), Buffer.alloc(32), Buffer.alloc(8), Buffer.alloc(0))).toThrow(
      /tag is 8 bytes/,
    );
    live.release();
  });

  it('REKEY_AES_GCM: node, native (the addon or a clear error), auto (the addon where it loads)', () => {
    expect(loadAesGcmBackend({ REKEY_AES_GCM: 'node' }).name).toBe('node');
    expect(() => loadAesGcmBackend({ REKEY_AES_GCM: 'fast' })).toThrow(ConfigError);
    expect(() => loadAesGcmBackend({ REKEY_AES_GCM: 'native', REKEY_AES_GCM_ADDON: '/nonexistent/aes.node' })).toThrow(
      /REKEY_AES_GCM=native.*\/nonexistent\/aes\.node did not load/,
    );
    const fallback = loadAesGcmBackend({ REKEY_AES_GCM_ADDON: '/nonexistent/aes.node' });
    expect(fallback.name).toBe('node');
    expect(fallback.detail).toMatch(/did not load/);
    const auto = loadAesGcmBackend({ REKEY_AES_GCM_ADDON: inject('toolchain').aesGcmAddon ?? '' });
    expect(auto.name).toBe('native');
  });
});
