import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { base64Length, decodeBase64Into, encodeBase64Into } from '../../src/codec/base64-bytes';

describe('standard base64 from bytes to bytes', () => {
  it("encodes every length as Node's toString('base64') does, padding included", () => {
    for (let n = 0; n < 200; n++) {
      const bytes = randomBytes(n);
      const out = Buffer.alloc(base64Length(n) + 3);
      const written = encodeBase64Into(bytes, 0, n, out, 3);
      expect(written).toBe(base64Length(n));
      expect(out.toString('latin1', 3, 3 + written)).toBe(bytes.toString('base64'));
    }
  });

  it('decodes what Node writes back to the same bytes, from inside a larger buffer', () => {
    for (let n = 0; n < 200; n++) {
      const bytes = randomBytes(n);
      const text = Buffer.from(`xx${bytes.toString('base64')}yy`, 'latin1');
      const out = Buffer.alloc(256);
      expect(decodeBase64Into(text, 2, text.length - 2, out)).toBe(n);
      expect(out.subarray(0, n).equals(bytes)).toBe(true);
    }
  });

  it("refuses what Node's encoder never writes, which Node's decoder would skip or take: a caller then goes the codec's way", () => {
    const good = Buffer.from(randomBytes(60).toString('base64'), 'latin1'); // 80 characters, no padding
    const out = Buffer.alloc(256);
    const refused = (text: string) => decodeBase64Into(Buffer.from(text, 'latin1'), 0, text.length, out);
    const base = good.toString('latin1');
    expect(refused(base)).toBe(60);
    expect(refused(base.slice(0, -1))).toBe(-1); // not a multiple of four
    expect(refused(`${base.slice(0, 10)}-${base.slice(11)}`)).toBe(-1); // base64url's alphabet
    expect(refused(`${base.slice(0, 10)}_${base.slice(11)}`)).toBe(-1);
    expect(refused(`${base.slice(0, 10)} ${base.slice(11)}`)).toBe(-1); // a space
    expect(refused(`${base.slice(0, 10)}=${base.slice(11)}`)).toBe(-1); // padding inside
    expect(refused(`${base}====`)).toBe(-1); // a group of padding alone
    expect(refused(`${base.slice(0, -4)}A===`)).toBe(-1); // three characters of padding
    expect(refused(`${base.slice(0, 10)}\u00e9${base.slice(12)}`)).toBe(-1); // not ASCII
    // Too long for the output buffer given.
    expect(decodeBase64Into(good, 0, good.length, Buffer.alloc(59))).toBe(-1);
  });
});
