// Standard base64 (RFC 4648 §4, with padding) from bytes to bytes: a value read as its packed UTF-8 bytes (a binary
// COPY's text field) is decoded where it lies, and a sealed value is encoded straight into the packed column that goes
// back, with no string per value. Node's own decoder needs a string and skips what it does not know; this one accepts
// only what Node's encoder writes (the alphabet, a length that is a multiple of four, `=` only as the last one or two
// characters) and answers -1 for anything else, so that a caller can send such a value the codec's way instead.

const ALPHABET = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', 'latin1');
const EQUALS = 61;

/** Each byte's value in the alphabet, or -1. */
const VALUE = new Int8Array(256).fill(-1);
ALPHABET.forEach((c, i) => (VALUE[c] = i));

/** Bytes `start` to `end` of `input`, standard base64, decoded into `out` from 0: their length, or -1. */
export function decodeBase64Into(input: Uint8Array, start: number, end: number, out: Uint8Array): number {
  const length = end - start;
  if (length % 4 !== 0) return -1;
  if (length === 0) return 0;
  let pad = 0;
  if (input[end - 1] === EQUALS) pad = input[end - 2] === EQUALS ? 2 : 1;
  const size = (length / 4) * 3 - pad;
  if (size > out.length) return -1;
  let o = 0;
  const full = end - (pad > 0 ? 4 : 0);
  let k = start;
  for (; k < full; k += 4) {
    const a = VALUE[input[k]!]!;
    const b = VALUE[input[k + 1]!]!;
    const c = VALUE[input[k + 2]!]!;
    const d = VALUE[input[k + 3]!]!;
    if ((a | b | c | d) < 0) return -1;
    const n = (a << 18) | (b << 12) | (c << 6) | d;
    out[o++] = n >>> 16;
    out[o++] = (n >>> 8) & 0xff;
    out[o++] = n & 0xff;
  }
  if (pad > 0) {
    const a = VALUE[input[k]!]!;
    const b = VALUE[input[k + 1]!]!;
    const c = pad === 1 ? VALUE[input[k + 2]!]! : 0;
    if ((a | b | c) < 0) return -1;
    const n = (a << 18) | (b << 12) | (c << 6);
    out[o++] = n >>> 16;
    if (pad === 1) out[o++] = (n >>> 8) & 0xff;
  }
  return o;
}

/** Standard base64 of `input[start, end)` written into `out` at `at`, padded as Node writes it: its length. */
export function encodeBase64Into(input: Uint8Array, start: number, end: number, out: Uint8Array, at: number): number {
  let o = at;
  let k = start;
  for (; k + 3 <= end; k += 3) {
    const n = (input[k]! << 16) | (input[k + 1]! << 8) | input[k + 2]!;
    out[o++] = ALPHABET[n >>> 18]!;
    out[o++] = ALPHABET[(n >>> 12) & 63]!;
    out[o++] = ALPHABET[(n >>> 6) & 63]!;
    out[o++] = ALPHABET[n & 63]!;
  }
  const left = end - k;
  if (left > 0) {
    const n = (input[k]! << 16) | (left === 2 ? input[k + 1]! << 8 : 0);
    out[o++] = ALPHABET[n >>> 18]!;
    out[o++] = ALPHABET[(n >>> 12) & 63]!;
    out[o++] = left === 2 ? ALPHABET[(n >>> 6) & 63]! : EQUALS;
    out[o++] = EQUALS;
  }
  return o - at;
}

/** The length of the standard base64 of `bytes` bytes. */
export const base64Length = (bytes: number): number => Math.ceil(bytes / 3) * 4;
