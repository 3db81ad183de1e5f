// Whether the native addon leaves key material in the process after release(), read from the process's own memory
// (/proc/self/maps and /proc/self/mem, Linux). Its own file, so that its process holds no other test's keys.
//
// The test never holds a plain copy of what it looks for, or it would find that copy: it keeps each secret XORed
// with a random mask (the pair reveals the secret only when combined, byte by byte, at a candidate), and the key
// Buffer the addon was given is zeroed at once. Only the first 4 bytes of a secret are ever plain (the needle that
// finds candidates); each candidate is then compared in full.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { testAddon } from '../helpers/native-addon';
import {
  MYCELIUM_DEK_FORMAT,
  MYCELIUM_V1_FIELD_FORMAT,
  myceliumV2FieldFormat,
  REKEY_DEK_FORMAT,
} from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { nativeSchedule } from '../../src/crypto/aes-gcm';
import { rewrapChunkNative } from '../../src/crypto/native-chunk';
import { migrateChunkNative } from '../../src/rewrap/migrate-native';
import { packed } from '../helpers/packed-columns';
import { findInMemory, masked, part, sealFromShares, type Masked } from '../helpers/memory-scan';

/** GF(2)-linear maps on 16-byte blocks apply to the masked value and the mask alike, so the secret stays masked. */
function mapBoth(secret: Masked, what: string, f: (block: Buffer) => Buffer): Masked {
  return { what, masked: f(secret.masked), mask: f(secret.mask) };
}

/** polyval::mulx (RFC 8452, appendix A): the block as a little-endian 128-bit number, times x modulo POLYVAL's
 *  polynomial. ghash 0.5 keeps GHASH's key H as mulx(reverse(H)). Linear over GF(2). */
function mulx(block: Buffer): Buffer {
  let v = BigInt(`0x${Buffer.from(block).reverse().toString('hex')}`);
  const high = v >> 127n;
  v = (v << 1n) & ((1n << 128n) - 1n);
  v ^= high ^ (high << 127n) ^ (high << 126n) ^ (high << 121n);
  return Buffer.from(v.toString(16).padStart(32, '0'), 'hex').reverse();
}

/** Seals and opens values of several sizes under the schedule, as a rewrap chunk does. */
function use(schedule: ReturnType<typeof nativeSchedule>): void {
  for (let i = 0; i < 200; i++) {
    const nonce = randomBytes(12);
    const plaintext = randomBytes(i % 97);
    const aad = randomBytes(i % 41);
    const { ciphertext, tag } = schedule.seal(nonce, plaintext, aad);
    expect(schedule.open(nonce, ciphertext, tag, aad)?.equals(plaintext)).toBe(true);
  }
}

describe('issue 24, finding 5: the native AES-GCM addon zeroizes what it derived from a key when released', () => {
  it('after release() no copy of a KEK (neither half) is left anywhere in the process, where one was while in use', () => {
    const gcm = testAddon();
    const key = randomBytes(32);
    const kek = masked('the KEK', key);
    const schedule = nativeSchedule(gcm, key);
    key.fill(0);
    use(schedule);
    // For AES-256 the first two round keys are the key; the decryption schedule ends with the first. Looked for
    // whole and by halves, so a lone round key counts too.
    const secrets = [kek, part(kek, 0, 16, 'its first half'), part(kek, 16, 32, 'its second half')];

    const live = findInMemory(secrets);
    // The scan sees the addon's memory: the live schedule holds the key.
    expect(live.bytesRead).toBeGreaterThan(1 << 20);
    expect(live.found.map((f) => f.what)).toContain('the KEK');

    schedule.release();
    const released = findInMemory(secrets);
    expect(released.found).toEqual([]);
  });

  it("after release() GHASH's key (H, the key's encryption of the zero block) is left nowhere in the process", () => {
    const gcm = testAddon();
    // GCM's published test case 16 (McGrew and Viega): its key and, from the same paper, H = E(K, 0^128).
    const key = Buffer.from('feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308', 'hex');
    const h = Buffer.from('acbef20579b4b8ebce889bac8732dad7', 'hex');
    const hMasked = masked('H', h);
    h.fill(0);
    // What the addon holds: polyval's form of H (ghash 0.5), mulx of H in reverse byte order.
    const held = mapBoth(hMasked, "GHASH's key as polyval holds it", (block) => mulx(Buffer.from(block).reverse()));
    const schedule = nativeSchedule(gcm, key);
    key.fill(0);
    use(schedule);

    expect(findInMemory([held]).found.map((f) => f.what)).toContain("GHASH's key as polyval holds it");

    schedule.release();
    expect(findInMemory([held, hMasked]).found).toEqual([]);
  });

  it('a schedule expanded again with another key (rekey, as a migration reuses one per DEK) keeps no copy of the key it held, and release() leaves neither', () => {
    const gcm = testAddon();
    const first = randomBytes(32);
    const second = randomBytes(32);
    const firstKey = masked('the first key', first);
    const secondKey = masked('the second key', second);
    const schedule = nativeSchedule(gcm, first);
    first.fill(0);
    use(schedule);
    expect(findInMemory([firstKey]).found.map((f) => f.what)).toContain('the first key');

    expect(schedule.rekey(second)).toBe(true);
    second.fill(0);
    use(schedule);
    const secrets = [
      firstKey,
      part(firstKey, 0, 16, "the first key's first half"),
      part(firstKey, 16, 32, "the first key's second half"),
    ];
    const rekeyed = findInMemory([...secrets, secondKey]);
    expect(rekeyed.found.map((f) => f.what)).toEqual(expect.arrayContaining(['the second key']));
    expect(rekeyed.found.filter((f) => f.what.startsWith('the first key'))).toEqual([]);

    schedule.release();
    expect(findInMemory([...secrets, secondKey, part(secondKey, 0, 16, "the second key's first half")]).found).toEqual(
      [],
    );
  });

  it('a chunk rewrapped in one native call leaves no plaintext DEK anywhere in the process, and neither KEK once released', () => {
    const gcm = testAddon();
    const fromBytes = randomBytes(32);
    const toBytes = randomBytes(32);
    const keks = [masked('the KEK rewrapped from', fromBytes), masked('the KEK rewrapped to', toBytes)];
    const from = nativeSchedule(gcm, fromBytes);
    const to = nativeSchedule(gcm, toBytes);
    fromBytes.fill(0);
    toBytes.fill(0);
    // Each wrapped DEK is made without its plaintext ever existing here: GCM's ciphertext is the plaintext XOR a
    // keystream and its tag is linear in the ciphertext, so sealing three random shares under one nonce and XORing the
    // three ciphertexts and the three tags gives a valid value whose plaintext is the XOR of the shares.
    const count = 64;
    const deks: Masked[] = [];
    const tenants: string[] = [];
    const values: Buffer[] = [];
    const xor = (a: Buffer, b: Buffer) => Buffer.from(a.map((x, k) => x ^ b[k]!));
    const aadOf = (tenant: string, kekId: string) =>
      Buffer.concat([
        Buffer.from('rekey/dek/v1\0'),
        Buffer.from([0, 0, 0, tenant.length]),
        Buffer.from(tenant),
        Buffer.from([0, 0, 0, kekId.length]),
        Buffer.from(kekId),
      ]);
    for (let i = 0; i < count; i++) {
      const tenant = `tenant-${i}`;
      const nonce = randomBytes(12);
      const shares = [randomBytes(32), randomBytes(32), randomBytes(32)];
      const sealed = shares.map((share) => from.seal(nonce, share, aadOf(tenant, 'v1')));
      const ciphertext = xor(xor(sealed[0]!.ciphertext, sealed[1]!.ciphertext), sealed[2]!.ciphertext);
      const tag = xor(xor(sealed[0]!.tag, sealed[1]!.tag), sealed[2]!.tag);
      values.push(Buffer.concat([Buffer.from([1]), nonce, ciphertext, tag]));
      tenants.push(tenant);
      deks.push({ what: `DEK ${i}`, masked: xor(shares[0]!, shares[1]!), mask: shares[2]! });
    }
    const columns = {
      count,
      columns: {
        wrapped_dek: {
          kind: 'bytes' as const,
          column: { lengths: Int32Array.from(values, (v) => v.length), bytes: new Uint8Array(Buffer.concat(values)) },
        },
        tenant_id: {
          kind: 'text' as const,
          column: {
            lengths: Int32Array.from(tenants, (t) => t.length),
            bytes: new Uint8Array(Buffer.from(tenants.join(''))),
          },
        },
      },
    };
    const chunk = rewrapChunkNative(
      compileFormat(REKEY_DEK_FORMAT),
      { kekId: 'v1', key: from },
      { kekId: 'v2', key: to },
      columns,
      { others: false, dryRun: false },
    );
    // Every row opened and was sealed in the one call.
    expect(chunk?.nativeRows).toBe(count);

    const after = findInMemory([...deks, ...keks]);
    expect(after.found.filter((f) => f.what.startsWith('DEK'))).toEqual([]);
    // The scan sees the live schedules, and would see a DEK where one is: the first, opened here from what was written.
    expect(after.found.map((f) => f.what)).toEqual(expect.arrayContaining(keks.map((k) => k.what)));
    const column = chunk!.result.values[0]!;
    const written = Buffer.from(column.kind === 'bytes' ? column.column.bytes.subarray(0, 61) : []);
    const opened = to.open(
      written.subarray(1, 13),
      written.subarray(13, 45),
      written.subarray(45, 61),
      aadOf('tenant-0', 'v2'),
    );
    expect(findInMemory([deks[0]!]).found.map((f) => f.what)).toContain('DEK 0');
    opened!.fill(0);

    from.release();
    to.release();
    const halves = keks.flatMap((k) => [
      part(k, 0, 16, `${k.what}, first half`),
      part(k, 16, 32, `${k.what}, second half`),
    ]);
    expect(findInMemory([...keks, ...halves]).found).toEqual([]);
  });

  it("a migration's chunk in one native call leaves no DEK (whole or by halves) and no field's plaintext anywhere in the process", () => {
    const gcm = testAddon();
    const kekBytes = randomBytes(32);
    const kekSecret = masked('the KEK', kekBytes);
    const kek = nativeSchedule(gcm, kekBytes);
    kekBytes.fill(0);
    // Each value sealed from three random shares, so its plaintext never exists here.
    const sealShares = sealFromShares((nonce, plaintext, aad) => kek.seal(nonce, plaintext, aad));
    const count = 64;
    const fields = ['telegram_bot_token', 'telegram_webhook_secret'];
    const tenants: string[] = [];
    const dekValues: string[] = [];
    const values: string[][] = fields.map(() => []);
    const secrets: Masked[] = [];
    for (let i = 0; i < count; i++) {
      const tenant = randomUUID();
      tenants.push(tenant);
      const dek = sealShares(Buffer.from(tenant.replace(/-/g, ''), 'hex'), `DEK ${i}`);
      dekValues.push(`v2:${dek.stored}`);
      secrets.push(
        dek.secret,
        part(dek.secret, 0, 16, `DEK ${i}, first half`),
        part(dek.secret, 16, 32, `DEK ${i}, second half`),
      );
      fields.forEach((_, f) => {
        const value = sealShares(Buffer.alloc(0), `field ${f} of row ${i}`);
        values[f]!.push(value.stored);
        secrets.push(value.secret);
      });
    }
    const ids = packed(tenants);
    const codecs = {
      dek: compileFormat(MYCELIUM_DEK_FORMAT),
      legacy: fields.map(() => compileFormat(MYCELIUM_V1_FIELD_FORMAT)),
      current: fields.map((f) => compileFormat(myceliumV2FieldFormat(f))),
    };
    const chunk = migrateChunkNative(
      codecs,
      { kekId: '1', key: kek },
      {
        count,
        tenants: ids,
        values: values.map((column) => packed(column)),
        dek: {
          ids,
          columns: {
            count,
            columns: { encrypted_dek: { kind: 'text', column: packed(dekValues) }, id: { kind: 'text', column: ids } },
          },
        },
      },
      randomBytes(12 * count * fields.length),
    );
    // Every row was taken in the one call.
    expect(chunk?.written).toBe(count);

    const after = findInMemory([...secrets, kekSecret]);
    expect(after.found.filter((f) => f.what !== 'the KEK')).toEqual([]);
    // The scan sees the live schedule, and would see a secret where one is: the first field, opened here again.
    expect(after.found.map((f) => f.what)).toContain('the KEK');
    const first = Buffer.from(values[0]![0]!, 'base64');
    const opened = kek.open(first.subarray(0, 12), first.subarray(12, 44), first.subarray(44), Buffer.alloc(0));
    expect(findInMemory([secrets[3]!]).found.map((f) => f.what)).toContain('field 0 of row 0');
    opened!.fill(0);
    kek.release();
  });
});
