// Looks for secrets in the process's own readable private memory (/proc/self/maps and /proc/self/mem, Linux), as an
// attacker who can read a worker's memory (a core dump, a swap file, a debugger) would. The caller never holds a plain
// copy of what it looks for, or the scan would find that copy: a secret is kept XORed with a random mask, and only its
// first 4 bytes are ever plain (the needle that finds candidates), each candidate then compared in full.
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';

/** A secret as `masked` XOR `mask`, neither of which is the secret. */
export interface Masked {
  what: string;
  masked: Buffer;
  mask: Buffer;
}

/** `secret` masked; the caller zeroizes `secret` itself. */
export function masked(what: string, secret: Uint8Array): Masked {
  const mask = randomBytes(secret.length);
  const out = Buffer.alloc(secret.length);
  for (let i = 0; i < secret.length; i++) out[i] = secret[i]! ^ mask[i]!;
  return { what, masked: out, mask };
}

/** Bytes `start` to `end` of a masked secret (a half of a key, looked for alone). */
export function part(secret: Masked, start: number, end: number, what: string): Masked {
  return { what, masked: secret.masked.subarray(start, end), mask: secret.mask.subarray(start, end) };
}

/** The secret in the clear, into `out` (for a check after the scans); the caller zeroizes it. */
export function unmask(secret: Masked, out: Buffer = Buffer.alloc(secret.masked.length)): Buffer {
  for (let i = 0; i < secret.masked.length; i++) out[i] = secret.masked[i]! ^ secret.mask[i]!;
  return out;
}

export interface Found {
  what: string;
  address: string;
  mapping: string;
}

/** Whether the address is in a readable mapping of the process now. */
function stillMapped(address: bigint): boolean {
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .trim()
    .split('\n')
    .some((line) => {
      const [range, perms] = line.split(/\s+/);
      const [start, end] = range!.split('-').map((hex) => BigInt(`0x${hex}`)) as [bigint, bigint];
      return perms!.startsWith('r') && start <= address && address < end;
    });
}

/**
 * Every place in the process's readable private memory (heaps, stacks, anonymous mappings, the addon's data) that holds
 * one of the secrets. Throws if a readable mapping cannot be read, rather than skip it. One pass over the memory for
 * any number of secrets: each 4-byte window is looked up in a bitmap of the secrets' first 4 bytes, and only a hit is
 * compared in full.
 */
export function findInMemory(secrets: Masked[]): { found: Found[]; bytesRead: number } {
  const mappings = fs.readFileSync('/proc/self/maps', 'utf8').trim().split('\n');
  const memory = fs.openSync('/proc/self/mem', 'r');
  const window = Buffer.alloc(1 << 22);
  const overlap = Math.max(...secrets.map((s) => s.masked.length)) - 1;
  // The first 4 bytes of each secret (little-endian), as a number: a bitmap of their low 24 bits, then the secrets.
  const byNeedle = new Map<number, Masked[]>();
  const bitmap = new Uint8Array(1 << 21);
  for (const secret of secrets) {
    const m = secret.masked;
    const k = secret.mask;
    const needle = ((m[0]! ^ k[0]!) | ((m[1]! ^ k[1]!) << 8) | ((m[2]! ^ k[2]!) << 16) | ((m[3]! ^ k[3]!) << 24)) >>> 0;
    byNeedle.set(needle, [...(byNeedle.get(needle) ?? []), secret]);
    bitmap[(needle & 0xffffff) >>> 3]! |= 1 << (needle & 7);
  }
  const found: Found[] = [];
  let bytesRead = 0;
  try {
    for (const line of mappings) {
      const [range, perms, , , , ...rest] = line.split(/\s+/);
      const mapping = rest.join(' ');
      if (!perms?.startsWith('r') || perms[3] !== 'p' || /^\[(vvar|vvar_vclock|vsyscall)\]$/.test(mapping)) continue;
      const [start, end] = range!.split('-').map((hex) => BigInt(`0x${hex}`)) as [bigint, bigint];
      for (let at = start; at < end; at += BigInt(window.length - overlap)) {
        const length = Number(end - at < BigInt(window.length) ? end - at : BigInt(window.length));
        let got: number;
        try {
          got = fs.readSync(memory, window, 0, length, at);
        } catch (err) {
          // A mapping the process let go of while it was scanned (a garbage collection, a thread's stack) is gone;
          // any other that cannot be read is an error, not a place to skip.
          if ((err as NodeJS.ErrnoException).code === 'EIO' && !stillMapped(at)) break;
          throw err;
        }
        // A mapping that shrank while it was scanned (the heap trimmed by a free, between reading the maps and this
        // read) reads short: what it still holds was read; what it let go of is mapped no more, so nothing can read
        // it. A short read of memory still mapped is an error, not a place to skip.
        if (got !== length && stillMapped(at + BigInt(got))) {
          throw new Error(`read ${got} of ${length} bytes at 0x${at.toString(16)} (${line})`);
        }
        bytesRead += got;
        const view = window;
        let v = 0;
        for (let i = 0; i < got; i++) {
          v = ((v >>> 8) | (view[i]! << 24)) >>> 0;
          if (i < 3) continue;
          const low = v & 0xffffff;
          if ((bitmap[low >>> 3]! & (1 << (low & 7))) === 0) continue;
          const candidates = byNeedle.get(v);
          if (!candidates) continue;
          const s = i - 3;
          for (const secret of candidates) {
            let same = s + secret.masked.length <= got;
            for (let j = 4; same && j < secret.masked.length; j++) {
              same = view[s + j] === (secret.masked[j]! ^ secret.mask[j]!);
            }
            if (same) found.push({ what: secret.what, address: `0x${(at + BigInt(s)).toString(16)}`, mapping });
          }
        }
        v = 0;
        if (got < window.length) break;
      }
    }
  } finally {
    window.fill(0);
    bitmap.fill(0);
    byNeedle.clear();
    fs.closeSync(memory);
  }
  // A secret found where two windows overlap is found twice: once is enough.
  const seen = new Set<string>();
  return {
    found: found.filter((f) => !seen.has(`${f.what}@${f.address}`) && seen.add(`${f.what}@${f.address}`)),
    bytesRead,
  };
}

/** What seals a value under a key that lies only in native memory (a KeySchedule's seal). */
type Seal = (nonce: Buffer, plaintext: Buffer, aad: Buffer) => { ciphertext: Buffer; tag: Buffer };

const xorBytes = (a: Buffer, b: Buffer): Buffer => Buffer.from(a.map((x, k) => x ^ b[k]!));

/**
 * A sealer of 32-byte secrets that never exist in this process: each value is sealed from three random shares under
 * one nonce (AES-GCM is a stream cipher, and GHASH is linear, so XORing the three ciphertexts and the three tags gives
 * a valid value whose plaintext is the XOR of the shares). Returns the stored form (nonce ‖ ciphertext ‖ tag, base64)
 * and the secret masked, for `findInMemory`.
 */
export function sealFromShares(seal: Seal): (aad: Buffer, what: string) => { stored: string; secret: Masked } {
  return (aad, what) => {
    const nonce = randomBytes(12);
    const shares = [randomBytes(32), randomBytes(32), randomBytes(32)];
    const sealed = shares.map((share) => seal(nonce, share, aad));
    const ciphertext = xorBytes(xorBytes(sealed[0]!.ciphertext, sealed[1]!.ciphertext), sealed[2]!.ciphertext);
    const tag = xorBytes(xorBytes(sealed[0]!.tag, sealed[1]!.tag), sealed[2]!.tag);
    const stored = Buffer.concat([nonce, ciphertext, tag]).toString('base64');
    return { stored, secret: { what, masked: xorBytes(shares[0]!, shares[1]!), mask: shares[2]! } };
  };
}
