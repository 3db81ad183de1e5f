// Adversary9: migrate-dek's one native call (native/aes-gcm migrate_chunk) on rows it starts and then leaves to the
// per-field path: each row's DEK opened and its first field opened and sealed, its second field not opening. Nothing
// of those DEKs (whole or by halves) nor of the first fields' plaintexts may be left in the process after the call.
// Its own file, so that its process holds no other test's keys; the technique of aes-gcm-zeroize.test.ts
// (test/helpers/memory-scan.ts: each secret held XORed with a mask, never plain).
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { testAddon } from '../helpers/native-addon';
import { MYCELIUM_DEK_FORMAT, MYCELIUM_V1_FIELD_FORMAT, myceliumV2FieldFormat } from '../../src/codec/formats';
import { compileFormat } from '../../src/codec/sealed-format';
import { nativeSchedule } from '../../src/crypto/aes-gcm';
import { MIGRATE_LEFT, migrateChunkNative } from '../../src/rewrap/migrate-native';
import { packed } from '../helpers/packed-columns';
import { findInMemory, masked, part, sealFromShares, type Masked } from '../helpers/memory-scan';

describe('adversary9: a migration chunk whose rows the addon starts and leaves', () => {
  it('leaves no DEK (whole or by halves) and no plaintext of the field it had sealed before the row was left', () => {
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
      const good = sealShares(Buffer.alloc(0), `field 0 of row ${i}`);
      values[0]!.push(good.stored);
      secrets.push(good.secret);
      // The second field's tag broken: it does not open, and the row is left after its first field was sealed.
      const bad = Buffer.from(sealShares(Buffer.alloc(0), `field 1 of row ${i}`).stored, 'base64');
      bad[bad.length - 1]! ^= 1;
      values[1]!.push(bad.toString('base64'));
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
    // Every row was started and left.
    expect(chunk?.written).toBe(0);
    expect([...chunk!.outcomes].every((o) => o === MIGRATE_LEFT)).toBe(true);

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
