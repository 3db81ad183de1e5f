// Adversary of the native chunk rewrap (issue 27, native6): a chunk rewrapped by a crypto thread (rewrapChunk, the
// task a thread runs) must seal every value under exactly the associated data the format defines, byte for byte, for
// ids and labels a Rust reimplementation could read otherwise (non-ASCII, empty, long, upper-case or dashless UUIDs,
// the largest label Mycelium's integer column holds), and must write, relabel and fail exactly the rows the
// TypeScript codec does on Node's own AES-GCM. Each written value is opened by fixture code of its own (node:crypto,
// not rekey's codecs), and its nonce is checked against every other nonce the chunks used.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, REKEY_DEK_FORMAT } from '../../src/codec/formats';
import { compileFormat, type Row, type SealedFormat } from '../../src/codec/sealed-format';
import { aesGcmBackend } from '../../src/crypto/aes-gcm';
import { unpackColumn, type Columns } from '../../src/crypto/columns';
import { rewrapChunk } from '../../src/crypto/rewrap-thread';
import { rewrapOne } from '../../src/rewrap/rewrap-rows';
import { lengthPrefixed, open, seal, uuidBytes } from '../helpers/gcm';
import { packed } from '../helpers/packed-columns';

interface Keks {
  from: { kekId: string; key: Buffer };
  to: { kekId: string; key: Buffer };
}

const copy = (key: Buffer): ArrayBuffer => {
  const buffer = new ArrayBuffer(32);
  new Uint8Array(buffer).set(key);
  return buffer;
};

/**
 * The chunk through rewrapChunk, and the same rows through the codec on Node's AES-GCM (Buffer keys, rewrapOne): the
 * same rows written, relabelled and failed with the same reasons. Returns each written row's value.
 */
function rewrapBoth(format: SealedFormat, keks: Keks, columns: Columns['columns'], rows: Row[]) {
  const result = rewrapChunk({
    format,
    from: { kekId: keks.from.kekId, key: copy(keks.from.key) },
    to: { kekId: keks.to.kekId, key: copy(keks.to.key) },
    rows: { count: rows.length, columns },
    options: { others: false, dryRun: false },
  });
  const codec = compileFormat(format);
  const expected = { written: [] as number[], relabel: [] as number[], failures: [] as unknown[] };
  rows.forEach((row, i) => {
    const outcome = rewrapOne(codec, keks.from, keks.to, row, { others: false, dryRun: false }, randomBytes(12));
    if (outcome === undefined) return;
    if ('reason' in outcome) expected.failures.push({ index: i, reason: outcome.reason });
    else {
      expected.written.push(i);
      expected.relabel.push(outcome.relabel ? 1 : 0);
    }
  });
  expect([...result.indexes], 'the rows written').toEqual(expected.written);
  expect([...result.relabel], 'the rows relabelled').toEqual(expected.relabel);
  expect(result.failures, 'the rows failed, and why').toEqual(expected.failures);
  const values = unpackColumn(result.values[0]!) as (string | Buffer)[];
  return { indexes: [...result.indexes], values };
}

/** Every nonce of every value written, across chunks: none twice. */
const nonces = new Set<string>();
function fresh(nonce: Buffer): void {
  const hex = nonce.toString('hex');
  expect(nonces.has(hex), `nonce ${hex} used twice`).toBe(false);
  nonces.add(hex);
}

describe('native6 adversary: a chunk rewrapped natively binds exactly the associated data the codec binds', () => {
  it("rekey's format: tenant ids non-ASCII, empty, long (past any scratch buffer), with NUL and combining marks; KEK ids non-ASCII and long", () => {
    expect(aesGcmBackend().name, 'npm run setup builds the native AES-GCM addon').toBe('native');
    const tenantIds = [
      '',
      'ü',
      'テナント-7',
      'emoji-😀-tenant',
      'e\u0301',
      '\uFEFFbom',
      'x\u0000y',
      'a'.repeat(255),
      'b'.repeat(256),
      'c'.repeat(257),
      'd'.repeat(5000),
      `ñ${'é'.repeat(300)}`,
    ];
    for (const [fromId, toId] of [
      ['v1', 'v2'],
      ['ключ-1', 'ключ-2'],
      ['k'.repeat(200), `K${'😀'.repeat(100)}`],
      ['', 'v2'],
    ] as const) {
      const keks: Keks = { from: { kekId: fromId, key: randomBytes(32) }, to: { kekId: toId, key: randomBytes(32) } };
      const aad = (tenant: string, kekId: string) =>
        Buffer.concat([Buffer.from('rekey/dek/v1\0', 'utf8'), lengthPrefixed(tenant), lengthPrefixed(kekId)]);
      const deks: Buffer[] = [];
      const rows: Row[] = [];
      const tenants: string[] = [];
      const values: Buffer[] = [];
      // Each id three times: under `from` (moved), under `to` (relabelled), under `from` bound to `to`'s id (fails).
      tenantIds.forEach((tenant, t) => {
        for (const kind of ['from', 'to', 'wrong-label'] as const) {
          const dek = randomBytes(32);
          const key = kind === 'to' ? keks.to : keks.from;
          const boundKekId = kind === 'from' ? keks.from.kekId : keks.to.kekId;
          const value = Buffer.concat([Buffer.from([1]), seal(key.key, dek, aad(tenant, boundKekId))]);
          deks.push(dek);
          tenants.push(tenant);
          values.push(value);
          rows.push({ $id: `${t}-${kind}`, $label: fromId, tenant_id: tenant, wrapped_dek: value });
        }
      });
      const { indexes, values: written } = rewrapBoth(
        REKEY_DEK_FORMAT,
        keks,
        {
          wrapped_dek: { kind: 'bytes', column: packed(values) },
          tenant_id: { kind: 'text', column: packed(tenants) },
        },
        rows,
      );
      expect(indexes.length).toBe(tenantIds.length * 2);
      indexes.forEach((index, i) => {
        const value = written[i] as Buffer;
        expect(value[0]).toBe(1);
        expect(value.length).toBe(61);
        fresh(value.subarray(1, 13));
        const opened = open(keks.to.key, value.subarray(1), aad(tenants[index]!, keks.to.kekId));
        expect(opened.equals(deks[index]!), `tenant ${JSON.stringify(tenants[index]!.slice(0, 20))}`).toBe(true);
      });
    }
  });

  it("Mycelium's format: ids upper-case, dashless and as PostgreSQL prints them, labels up to 2^31-1; text not as Node's encoder writes it fails as the codec says", () => {
    const keks: Keks = {
      from: { kekId: '2147483646', key: randomBytes(32) },
      to: { kekId: '2147483647', key: randomBytes(32) },
    };
    const deks: Buffer[] = [];
    const ids: string[] = [];
    const values: (string | null)[] = [];
    const canonical: string[] = [];
    const rows: Row[] = [];
    for (let i = 0; i < 200; i++) {
      const id = randomUUID();
      const dek = randomBytes(32);
      const key = i % 9 === 0 ? keks.to : keks.from;
      const shown = i % 3 === 0 ? id.toUpperCase() : i % 3 === 1 ? id.replace(/-/g, '') : id;
      let value: string | null = `v2:${seal(key.key, dek, uuidBytes(id)).toString('base64')}`;
      if (i % 17 === 5)
        value = value.slice(0, -1); // not a multiple of four
      else if (i % 19 === 5)
        value = `${value}=`; // padding past the end
      else if (i % 23 === 5)
        value = `v2:${value.slice(3).replace(/=+$/, '')}`; // (60 bytes: no padding to drop)
      else if (i % 29 === 5)
        value = `V2:${value.slice(3)}`; // another prefix
      else if (i % 31 === 5)
        value = `v2:${Buffer.from(value.slice(3), 'base64').toString('base64url')}`; // URL-safe
      else if (i % 37 === 5) value = null;
      deks.push(dek);
      ids.push(shown);
      canonical.push(id);
      values.push(value);
      rows.push({ $id: shown, $label: keks.from.kekId, id: shown, encrypted_dek: value });
    }
    const { indexes, values: written } = rewrapBoth(
      MYCELIUM_DEK_FORMAT,
      keks,
      { encrypted_dek: { kind: 'text', column: packed(values) }, id: { kind: 'text', column: packed(ids) } },
      rows,
    );
    expect(indexes.length).toBeGreaterThan(150);
    indexes.forEach((index, i) => {
      const value = written[i] as string;
      expect(value).toMatch(/^v2:[A-Za-z0-9+/]{80}$/);
      const sealed = Buffer.from(value.slice(3), 'base64');
      fresh(sealed.subarray(0, 12));
      expect(open(keks.to.key, sealed, uuidBytes(canonical[index]!)).equals(deks[index]!)).toBe(true);
    });
  });

  it('a format of its own: base64 values of every length (each padding), with a hex part, a length-prefixed UUID and the KEK id', () => {
    const format: SealedFormat = {
      value: { kind: 'combined', column: 'secret', encoding: 'base64', prefix: 'enc:' },
      aad: {
        read: [[{ hex: '00ff' }, { column: 'owner', as: 'uuid', lengthPrefix: true }, { text: '/' }, { kekId: true }]],
      },
    };
    const keks: Keks = { from: { kekId: 'old', key: randomBytes(32) }, to: { kekId: 'new', key: randomBytes(32) } };
    const aad = (owner: string, kekId: string) =>
      Buffer.concat([
        Buffer.from('00ff', 'hex'),
        lengthPrefixed(uuidBytes(owner)),
        Buffer.from('/'),
        Buffer.from(kekId),
      ]);
    const plaintexts: Buffer[] = [];
    const owners: string[] = [];
    const values: string[] = [];
    const rows: Row[] = [];
    for (let n = 0; n < 1100; n += n < 40 ? 1 : 97) {
      const owner = randomUUID();
      const plaintext = randomBytes(n);
      const value = `enc:${seal(keks.from.key, plaintext, aad(owner, 'old')).toString('base64')}`;
      plaintexts.push(plaintext);
      owners.push(owner);
      values.push(value);
      rows.push({ $id: owner, $label: 'old', owner, secret: value });
    }
    const { indexes, values: written } = rewrapBoth(
      format,
      keks,
      { secret: { kind: 'text', column: packed(values) }, owner: { kind: 'text', column: packed(owners) } },
      rows,
    );
    expect(indexes.length).toBe(rows.length);
    indexes.forEach((index, i) => {
      const value = written[i] as string;
      expect(value.length, `a value of ${plaintexts[index]!.length} bytes`).toBe(values[index]!.length);
      const sealed = Buffer.from(value.slice(4), 'base64');
      expect(sealed.toString('base64')).toBe(value.slice(4));
      fresh(sealed.subarray(0, 12));
      expect(open(keks.to.key, sealed, aad(owners[index]!, 'new')).equals(plaintexts[index]!)).toBe(true);
    });
  });
});
