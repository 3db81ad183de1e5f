// migrate-dek's chunk in one native call (src/rewrap/migrate-native.ts, native/aes-gcm migrate_chunk) against the
// per-field path (src/rewrap/migrate-chunk.ts with the addon's call turned off): the same rows with the same nonces
// must give every row the same outcome, every value the same bytes and every failure the same reason, on random
// data and on malformed rows of every kind. The fixtures are written with node:crypto (test/helpers/mycelium.ts).
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, MYCELIUM_V1_FIELD_FORMAT, myceliumV2FieldFormat } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { aesGcmBackend, nativeSchedule, releaseKey, scheduleKey } from '../../src/crypto/aes-gcm';
import { unpackTextColumn } from '../../src/crypto/columns';
import { migrateChunk, type MigrateChunkInput } from '../../src/rewrap/migrate-chunk';
import { MIGRATE_EMPTY, MIGRATE_LEFT, MIGRATE_WRITTEN, migrateChunkNative } from '../../src/rewrap/migrate-native';
import { seal } from '../helpers/gcm';
import { decryptField, decryptV1, encryptV1, kekOf, wrapDek } from '../helpers/mycelium';
import { packed } from '../helpers/packed-columns';

const FIELDS = ['telegram_bot_token', 'telegram_webhook_secret'];
const codecs = {
  dek: compileFormat(MYCELIUM_DEK_FORMAT),
  legacy: FIELDS.map(() => compileFormat(MYCELIUM_V1_FIELD_FORMAT)),
  current: FIELDS.map((f) => compileFormat(myceliumV2FieldFormat(f))),
};
const kek = kekOf(randomUUID());
const second = kekOf(randomUUID());
const other = kekOf(randomUUID());

interface Fixture {
  tenant: string;
  values: (string | null)[];
  /** The DEK row read with this row: its id and value, or null (none read: the caller gives it by tenant). */
  dek: { id: string; value: string } | null;
}

/** A value of one of the kinds a legacy field can hold, most of them well formed. */
function legacyValue(i: number, f: number): string | null {
  const plain = `${FIELDS[f]} ${i} ${randomBytes(1 + (i % 40)).toString('hex')}`;
  const good = encryptV1(kek, plain);
  switch ((i * 7 + f * 3) % 29) {
    case 0:
      return null;
    case 1:
      return encryptV1(second, plain); // under the second KEK held: the codecs' way opens it
    case 2:
      return encryptV1(other, plain); // under no KEK held
    case 3:
      return '%%% not base64';
    case 4:
      return good.slice(0, -4); // short
    case 5:
      return `${good.slice(0, 8)} ${good.slice(8)}`; // a space Node's decoder skips
    case 6:
      return `${good.slice(0, 8)}é${good.slice(9)}`; // not ASCII
    case 7: {
      const raw = Buffer.from(good, 'base64');
      raw[raw.length - 1]! ^= 1; // tampered tag
      return raw.toString('base64');
    }
    case 8:
      return `v2:${good}`; // already in another form
    case 9:
      return ''; // empty
    case 10:
      return encryptV1(kek, 'x'.repeat(1200)); // longer than the addon takes
    case 11:
      return good.replace(/\+/g, '-').replace(/\//g, '_'); // URL-safe characters
    case 12:
      return seal(kek, Buffer.alloc(0), Buffer.alloc(0)).toString('base64'); // an empty plaintext
    case 13:
      return `${good}==`; // padding past the end
    default:
      return good;
  }
}

/** Random rows: most tenants their own row with their DEK read with it, and every kind of DEK trouble. */
function fixtures(count: number): { rows: Fixture[]; deks: Map<string, Buffer>; byTenant: MigrateChunkInput['deks'] } {
  const deks = new Map<string, Buffer>();
  const byTenant: MigrateChunkInput['deks'] = {};
  const rows: Fixture[] = [];
  let previous: Fixture | undefined;
  for (let i = 0; i < count; i++) {
    const uuid = randomUUID();
    // Some rows have no legacy value at all.
    const values = i % 37 === 5 ? FIELDS.map(() => null) : FIELDS.map((_, f) => legacyValue(i, f));
    // Some tenants hold two rows (a webhook's secrets), read with the same DEK row.
    if (previous && i % 9 === 0) {
      rows.push({ tenant: previous.tenant, values, dek: previous.dek });
      continue;
    }
    const tenant = i % 5 === 0 ? uuid.toUpperCase() : i % 5 === 1 ? uuid.replace(/-/g, '') : uuid;
    const dek = randomBytes(32);
    deks.set(tenant, dek);
    let value = wrapDek(i % 13 === 0 ? second : kek, uuid, dek);
    let id: string | null = tenant;
    switch (i % 31) {
      case 3:
        value = wrapDek(other, uuid, dek); // under no KEK held
        break;
      case 4:
        value = wrapDek(kek, uuid, randomBytes(16)); // not 32 bytes
        break;
      case 5:
        value = value.replace('v2:', 'v1:');
        break;
      case 6:
        value = wrapDek(kek, randomUUID(), dek); // another tenant's binding
        break;
      case 7:
        id = `${uuid.slice(0, 7)}-${uuid.slice(7, 8)}${uuid.slice(9)}`; // a dash out of place
        break;
      case 8:
        id = null; // none read with the row: provisioned for the batch, given by tenant
        byTenant[tenant] = { $id: tenant, $label: '1', id: tenant, encrypted_dek: value };
        break;
      case 9:
        id = null;
        byTenant[tenant] = `tenant ${tenant} has no row in public.tenant: there is no DEK to encrypt it under`;
        break;
      case 10:
        value = `${value.slice(0, 10)}é${value.slice(11)}`;
        break;
    }
    previous = { tenant, values, dek: id === null ? null : { id, value } };
    rows.push(previous);
  }
  return { rows, deks, byTenant };
}

function input(rows: Fixture[], byTenant: MigrateChunkInput['deks']): MigrateChunkInput {
  const ids = packed(rows.map((r) => r.dek?.id ?? null));
  return {
    keks: [
      { kekId: '1', key: Buffer.from(kek) },
      { kekId: '2', key: Buffer.from(second) },
    ],
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

/** The result with its values as strings, to compare. */
function plain(result: ReturnType<typeof migrateChunk>) {
  return {
    indexes: [...result.indexes],
    values: result.values.map((column) => unpackTextColumn(column)),
    unreadable: result.unreadable,
    failures: result.failures,
  };
}

describe("migrate-dek's chunk in one native call", () => {
  it('gives every row the outcome, every value the bytes and every failure the reason the per-field path gives it with the same nonces', () => {
    expect(aesGcmBackend().name, 'npm run setup builds the native AES-GCM addon').toBe('native');
    const { rows, deks, byTenant } = fixtures(2_000);
    const nonces = randomBytes(12 * rows.reduce((n, r) => n + r.values.filter((v) => v !== null).length, 0));
    const perField = plain(migrateChunk(codecs, input(rows, byTenant), { nonces, native: false }));
    const native = plain(migrateChunk(codecs, input(rows, byTenant), { nonces }));
    // Every kind of row is there: written, and failed for each reason.
    expect(perField.indexes.length).toBeGreaterThan(500);
    expect(perField.failures.length).toBeGreaterThan(500);
    expect(new Set(perField.failures.map((f) => f.reason.replace(/[0-9a-fA-F-]{32,36}/g, 'T'))).size).toBeGreaterThan(
      5,
    );
    expect(native).toEqual(perField);
    // What is written opens, with the fixture's code, under the tenant's DEK.
    native.indexes.forEach((i, k) => {
      const row = rows[i]!;
      FIELDS.forEach((field, f) => {
        const value = native.values[f]![k];
        if (value === null || value === undefined) return;
        const legacy = row.values[f]!;
        const was = [kek, second].flatMap((key) => {
          try {
            return [decryptV1(key, legacy)];
          } catch {
            return [];
          }
        });
        expect(was).toContain(decryptField(deks.get(row.tenant)!, row.tenant, field, value));
      });
    });

    // The addon took most rows whole, and left each kind of other row to the per-field path.
    const key = scheduleKey(Buffer.from(kek));
    try {
      const call = migrateChunkNative(codecs, { kekId: '1', key }, input(rows, byTenant).rows, nonces, byTenant)!;
      expect(call).toBeDefined();
      const outcomes = [...call.outcomes];
      expect(outcomes.filter((o) => o === MIGRATE_WRITTEN).length).toBeGreaterThan(600);
      expect(outcomes.filter((o) => o === MIGRATE_LEFT).length).toBeGreaterThan(600);
      expect(outcomes.filter((o) => o === MIGRATE_EMPTY).length).toBeGreaterThan(0);
      expect(call.written).toBe(outcomes.filter((o) => o === MIGRATE_WRITTEN).length);
    } finally {
      releaseKey(key);
    }
  });

  it('a chunk of well-formed rows comes back from the one call alone, byte for byte as the per-field path', () => {
    const rows: Fixture[] = Array.from({ length: 500 }, (_, i) => {
      const tenant = randomUUID();
      return {
        tenant,
        values: FIELDS.map((field, f) => (i % 4 === f ? null : encryptV1(kek, `${field} ${i}`))),
        dek: { id: tenant, value: wrapDek(kek, tenant, randomBytes(32)) },
      };
    });
    const nonces = randomBytes(12 * rows.reduce((n, r) => n + r.values.filter((v) => v !== null).length, 0));
    const key = scheduleKey(Buffer.from(kek));
    try {
      const call = migrateChunkNative(codecs, { kekId: '1', key }, input(rows, {}).rows, nonces)!;
      expect(call.written).toBe(500);
    } finally {
      releaseKey(key);
    }
    const native = plain(migrateChunk(codecs, input(rows, {}), { nonces }));
    expect(native).toEqual(plain(migrateChunk(codecs, input(rows, {}), { nonces, native: false })));
    expect(native.indexes.length).toBe(500);
  });

  it("is not taken with Node's AES-GCM or an addon built before it, and the migration is as before", () => {
    const { rows, byTenant } = fixtures(300);
    const nonces = randomBytes(12 * rows.reduce((n, r) => n + r.values.filter((v) => v !== null).length, 0));
    const columns = input(rows, byTenant).rows;
    expect(migrateChunkNative(codecs, { kekId: '1', key: Buffer.from(kek) }, columns, nonces)).toBeUndefined();
    const { addon } = aesGcmBackend();
    const older = nativeSchedule({ GcmKey: addon!.GcmKey, rewrapChunk: addon!.rewrapChunk }, Buffer.from(kek));
    try {
      expect(migrateChunkNative(codecs, { kekId: '1', key: older }, columns, nonces)).toBeUndefined();
    } finally {
      older.release();
    }
  });

  it('refuses outputs that share memory with an input, and lengths that run past their bytes', () => {
    const { rows, byTenant } = fixtures(20);
    const columns = input(rows, byTenant).rows;
    const nonces = randomBytes(12 * rows.reduce((n, r) => n + r.values.filter((v) => v !== null).length, 0));
    const key = scheduleKey(Buffer.from(kek));
    try {
      const broken = {
        ...columns,
        values: [
          columns.values[0]!,
          { ...columns.values[1]!, lengths: columns.values[1]!.lengths.map((l) => (l < 0 ? l : 1 << 20)) },
        ],
      };
      expect(() => migrateChunkNative(codecs, { kekId: '1', key }, broken, nonces)).toThrow(/run past/);
      expect(() => migrateChunkNative(codecs, { kekId: '1', key }, columns, nonces.subarray(12))).toThrow(
        /12 bytes a value/,
      );
    } finally {
      releaseKey(key);
    }
  });
});
