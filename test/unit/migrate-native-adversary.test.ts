// Adversary9's attacks on migrate-dek's one native call per chunk (src/rewrap/migrate-native.ts, native/aes-gcm
// migrate_chunk): every value it writes must open the way Mycelium's gateway opens it (seed-systems.md, node:crypto:
// AAD = the tenant id's 16 bytes ‖ the field name, under the tenant's own DEK), no two values may share a nonce under
// one DEK, and odd rows must go exactly as the per-field path takes them. Fixtures with node:crypto
// (test/helpers/mycelium.ts), never rekey's codecs.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, MYCELIUM_V1_FIELD_FORMAT, myceliumV2FieldFormat } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { aesGcmBackend } from '../../src/crypto/aes-gcm';
import { unpackTextColumn } from '../../src/crypto/columns';
import { migrateChunk, type MigrateChunkInput } from '../../src/rewrap/migrate-chunk';
import { open, uuidBytes } from '../helpers/gcm';
import { encryptV1, kekOf, SYSTEM_TENANT, wrapDek } from '../helpers/mycelium';
import { packed } from '../helpers/packed-columns';

const FIELDS = ['telegram_bot_token', 'telegram_webhook_secret'];
const codecs = {
  dek: compileFormat(MYCELIUM_DEK_FORMAT),
  legacy: FIELDS.map(() => compileFormat(MYCELIUM_V1_FIELD_FORMAT)),
  current: FIELDS.map((f) => compileFormat(myceliumV2FieldFormat(f))),
};
const kek = kekOf(randomUUID());

interface Fixture {
  tenant: string;
  values: (string | null)[];
  dek: { id: string; value: string } | null;
}

function input(rows: Fixture[], byTenant: MigrateChunkInput['deks']): MigrateChunkInput {
  const ids = packed(rows.map((r) => r.dek?.id ?? null));
  return {
    keks: [{ kekId: '1', key: Buffer.from(kek) }],
    rows: {
      count: rows.length,
      tenants: packed(rows.map((r) => r.tenant)),
      values: FIELDS.map((_, f) => packed(rows.map((r) => r.values[f]!))),
      dek: {
        ids,
        labels: packed(rows.map((r) => (r.dek ? '1' : null))),
        columns: {
          count: rows.length,
          columns: {
            encrypted_dek: { kind: 'text', column: packed(rows.map((r) => r.dek?.value ?? null)) },
            id: { kind: 'text', column: ids },
          },
        },
      },
    },
    deks: byTenant,
    dryRun: false,
  };
}

function plain(result: ReturnType<typeof migrateChunk>) {
  return {
    indexes: [...result.indexes],
    values: result.values.map((column) => unpackTextColumn(column)),
    unreadable: result.unreadable,
    failures: result.failures,
  };
}

/** The gateway's read of a v2 field (seed-systems.md), on node:crypto. */
function gatewayRead(dek: Buffer, tenant: string, field: string, stored: string): string {
  expect(stored.startsWith('v2:')).toBe(true);
  const aad = Buffer.concat([uuidBytes(tenant), Buffer.from(field, 'ascii')]);
  return open(dek, Buffer.from(stored.slice(3), 'base64'), aad).toString();
}

/** The nonce of a stored v2 value. */
const nonceOf = (stored: string) => Buffer.from(stored.slice(3), 'base64').subarray(0, 12).toString('hex');

describe('adversary9: migrate-dek in one native call per chunk', () => {
  it("gives each value its own slot's nonce, rows taken by the addon and rows left to the per-field path alike, and every value opens as the gateway reads it", () => {
    expect(aesGcmBackend().name, 'npm run setup builds the native AES-GCM addon').toBe('native');
    const second = kekOf(randomUUID());
    const deks = new Map<string, Buffer>();
    const byTenant: MigrateChunkInput['deks'] = {};
    const rows: Fixture[] = [];
    const plaintexts: (string | null)[][] = [];
    for (let i = 0; i < 1500; i++) {
      const tenant = randomUUID();
      const dek = randomBytes(32);
      deks.set(tenant, dek);
      const plain = FIELDS.map((f) => `${f} ${i} ${randomBytes(1 + (i % 50)).toString('hex')}`);
      const values: (string | null)[] = plain.map((p) => encryptV1(kek, p));
      switch (i % 6) {
        case 1: // one good field, one that opens under no KEK held: the good one moves, the row by the per-field path
          values[1] = encryptV1(second, plain[1]!);
          plain[1] = null as unknown as string;
          break;
        case 2: // one field NULL
          values[0] = null;
          break;
        case 3: // one field truncated
          values[0] = values[0]!.slice(0, 16);
          break;
      }
      plaintexts.push(values.map((v, f) => (v === null || (i % 6 === 3 && f === 0) ? null : plain[f]!)));
      const value = wrapDek(kek, tenant, dek);
      if (i % 5 === 0) {
        byTenant[tenant] = { $id: tenant, $label: '1', id: tenant, encrypted_dek: value };
        rows.push({ tenant, values, dek: null });
      } else rows.push({ tenant, values, dek: { id: tenant, value } });
    }
    const slots: number[][] = [];
    let k = 0;
    for (const row of rows) slots.push(row.values.map((v) => (v === null ? -1 : k++)));
    const nonces = randomBytes(12 * k);
    const result = plain(migrateChunk(codecs, input(rows, byTenant), { nonces }));
    expect(result).toEqual(plain(migrateChunk(codecs, input(rows, byTenant), { nonces, native: false })));
    const seen = new Set<string>();
    let written = 0;
    result.indexes.forEach((i, w) => {
      FIELDS.forEach((field, f) => {
        const stored = result.values[f]![w];
        if (stored === null || stored === undefined) return;
        written++;
        const nonce = nonceOf(stored);
        expect(nonce).toBe(nonces.subarray(12 * slots[i]![f]!, 12 * slots[i]![f]! + 12).toString('hex'));
        seen.add(nonce);
        expect(gatewayRead(deks.get(rows[i]!.tenant)!, rows[i]!.tenant, field, stored)).toBe(plaintexts[i]![f]);
      });
    });
    expect(seen.size).toBe(written);
    // The half-good rows moved their good field and reported the other.
    expect(result.failures.filter((x) => x.field === 1).length).toBe(250);
    expect(written).toBeGreaterThan(2000);
  });

  it('never gives two values under the system DEK the same nonce over many chunks', () => {
    // The system tenant's DEK seals every TOTP and webhook secret: the one DEK with the most values under it.
    const tenant = SYSTEM_TENANT;
    const dek = randomBytes(32);
    const value = wrapDek(kek, tenant, dek);
    const seen = new Set<string>();
    let written = 0;
    for (let c = 0; c < 12; c++) {
      const rows: Fixture[] = Array.from({ length: 1000 }, (_, i) => ({
        tenant,
        values: FIELDS.map((f) => encryptV1(kek, `${f} ${c} ${i}`)),
        // Every seventh chunk's DEK row comes by tenant (provisioned for the batch).
        dek: c % 7 === 3 ? null : { id: tenant, value },
      }));
      const byTenant: MigrateChunkInput['deks'] =
        c % 7 === 3 ? { [tenant]: { $id: tenant, $label: '1', id: tenant, encrypted_dek: value } } : {};
      const result = plain(migrateChunk(codecs, input(rows, byTenant)));
      expect(result.indexes.length).toBe(1000);
      for (const column of result.values) {
        column.forEach((stored, w) => {
          written++;
          seen.add(nonceOf(stored!));
          if (w % 97 === 0) gatewayRead(dek, tenant, FIELDS[result.values.indexOf(column)]!, stored!);
        });
      }
    }
    expect(written).toBe(24_000);
    expect(seen.size).toBe(written);
  });
  it("takes rows whose tenant is no UUID (quotes, non-ASCII, Object.prototype's names) as the per-field path does, read or given by tenant", () => {
    const byTenant: MigrateChunkInput['deks'] = Object.create(null) as MigrateChunkInput['deks'];
    const rows: Fixture[] = [];
    const odd = ['__proto__', 'constructor', 'toString', "o'hara", 'tënant', '"quoted"', `${randomUUID()}'`];
    for (let i = 0; i < 40; i++) {
      const tenant = i < odd.length * 2 ? odd[i % odd.length]! : randomUUID();
      const values = FIELDS.map((f) => encryptV1(kek, `${f} ${i}`));
      // An odd id's DEK is bound to some UUID: nothing may read it as that id's.
      const value = wrapDek(kek, i < odd.length * 2 ? randomUUID() : tenant, randomBytes(32));
      if (i < odd.length || i % 2 === 0) {
        byTenant[tenant] = { $id: tenant, $label: '1', id: tenant, encrypted_dek: value };
        rows.push({ tenant, values, dek: null });
      } else rows.push({ tenant, values, dek: { id: tenant, value } });
    }
    const nonces = randomBytes(12 * rows.length * 2);
    const perField = plain(migrateChunk(codecs, input(rows, byTenant), { nonces, native: false }));
    const native = plain(migrateChunk(codecs, input(rows, byTenant), { nonces }));
    expect(native).toEqual(perField);
    // No row with an odd id was written; every other was.
    expect(perField.indexes).toEqual(rows.flatMap((r, i) => (i < odd.length * 2 ? [] : [i])));
    expect(perField.failures.length).toBe(odd.length * 2 * FIELDS.length);
  });
});
