// migrate-dek's crypto by column (src/rewrap/migrate-chunk.ts): values in their one-column text form are opened and
// sealed where they lie, with the native AES-GCM when it is in use; anything else goes the codecs' way. Both must give
// what the fixture code (not rekey's codecs) reads, and a value or a DEK that cannot be moved must get the codecs' own
// reason, whichever way it went.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, MYCELIUM_V1_FIELD_FORMAT, myceliumV2FieldFormat } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { unpackTextColumn, type ByteColumn } from '../../src/crypto/columns';
import { UnreadableValueError } from '../../src/errors';
import { migrateChunk } from '../../src/rewrap/migrate-chunk';
import { decryptField, encryptV1, kekOf, wrapDek } from '../helpers/mycelium';

function textColumn(values: (string | null)[]): ByteColumn {
  const parts = values.map((v) => (v === null ? null : Buffer.from(v, 'utf8')));
  const bytes = Buffer.concat(parts.flatMap((p) => (p === null ? [] : [p])));
  return { lengths: Int32Array.from(parts.map((p) => (p === null ? -1 : p.length))), bytes: new Uint8Array(bytes) };
}

const FIELDS = ['telegram_bot_token', 'telegram_webhook_secret'];
const codecs = {
  dek: compileFormat(MYCELIUM_DEK_FORMAT),
  legacy: FIELDS.map(() => compileFormat(MYCELIUM_V1_FIELD_FORMAT)),
  current: FIELDS.map((f) => compileFormat(myceliumV2FieldFormat(f))),
};

/** Why the codec refuses `value` under `kek`: its own reason. */
function openReason(value: string, tenant: string, kek: Buffer): string {
  try {
    codecs.legacy[0]!.open(kek, { value, tenant }, '1');
  } catch (err) {
    if (err instanceof UnreadableValueError) return err.reason;
    throw err;
  }
  throw new Error('it opened');
}

describe("migrate-dek's crypto by column", () => {
  it("seals what opens under the DEK the gateway reads, and gives the codecs' reason for a malformed value, a value under another KEK, a DEK under another KEK and a tenant without one", () => {
    const kek = kekOf(randomUUID());
    const other = kekOf(randomUUID());
    const [good, dekElsewhere, badValues, none] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    const deks = new Map([good, dekElsewhere, badValues].map((t) => [t, randomBytes(32)]));
    const plain = (t: string, f: number) => `${FIELDS[f]} of ${t}`;
    const rows = [
      { tenant: good, values: [encryptV1(kek, plain(good, 0)), encryptV1(kek, plain(good, 1))], dekKek: kek },
      { tenant: dekElsewhere, values: [encryptV1(kek, 'x'), null], dekKek: other },
      { tenant: badValues, values: ['%%% not base64', encryptV1(other, 'y')], dekKek: kek },
      { tenant: none, values: [null, encryptV1(kek, 'z')], dekKek: undefined },
    ];
    const wrapped = rows.map((r) => (r.dekKek ? wrapDek(r.dekKek, r.tenant, deks.get(r.tenant)!) : null));
    const dekIds = textColumn(rows.map((r, i) => (wrapped[i] ? r.tenant : null)));
    const result = migrateChunk(codecs, {
      keks: [{ kekId: '1', key: kek }],
      rows: {
        count: rows.length,
        tenants: textColumn(rows.map((r) => r.tenant)),
        values: FIELDS.map((_, f) => textColumn(rows.map((r) => r.values[f]!))),
        dek: {
          ids: dekIds,
          labels: textColumn(rows.map(() => '1')),
          columns: {
            count: rows.length,
            columns: {
              encrypted_dek: { kind: 'text', column: textColumn(wrapped) },
              id: { kind: 'text', column: dekIds },
            },
          },
        },
      },
      deks: { [none]: `tenant ${none} has no row in public.tenant: there is no DEK to encrypt it under` },
      dryRun: false,
    });
    // Only the good tenant's row is written, both fields, each read back by the fixture code under its DEK.
    expect([...result.indexes]).toEqual([0]);
    const sealed = result.values.map((column) => unpackTextColumn(column)[0]!);
    FIELDS.forEach((field, f) => expect(decryptField(deks.get(good)!, good, field, sealed[f]!)).toBe(plain(good, f)));
    expect(result.unreadable).toEqual([2, 2]);
    const dekReason = `tenant ${dekElsewhere}'s DEK does not unwrap under any KEK held ('1': ${(() => {
      try {
        codecs.dek.open(kek, { id: dekElsewhere, encrypted_dek: wrapped[1] }, '1');
      } catch (err) {
        return (err as UnreadableValueError).reason;
      }
      return 'opened';
    })()})`;
    expect(result.failures).toEqual([
      { index: 1, field: 0, reason: dekReason },
      { index: 2, field: 0, reason: codecs.legacy[0]!.check({ value: '%%% not base64' }) },
      {
        index: 2,
        field: 1,
        reason: `does not decrypt under any KEK held ('1': ${openReason(rows[2]!.values[1]!, badValues, kek)})`,
      },
      { index: 3, field: 1, reason: `tenant ${none} has no row in public.tenant: there is no DEK to encrypt it under` },
    ]);
  });
});
