// Adversary of the irreversible steps' proofs (issue 26's mission: before rekey retires or destroys a key it proves
// that no row still needs it). The proofs retire and destroy run under the registry row's lock read only the rows
// LABELLED with the KEK: a row labelled with the active KEK whose wrapped DEK is still sealed under the old one (an
// application's own write that changed the label and not the value, a row restored from a backup taken mid-rotation)
// is never tried. The rotation's verify is the only step that may see it, and it runs once, before the grace period:
// such a row written after it (or missed by it) passes retire, and the destruction at the end of the restore window
// removes the only key that opens it. Against PostgreSQL and the keyring file, through the worker's activities.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint, unwrapDek, wrapDek } from '../../src/envelope/dek-wrapping';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { useScratchDirectory, useTestDatabases } from '../helpers/database';
import { writeKeyringFile } from '../helpers/keyring';
import { storedIds } from '../helpers/store-keys';

const TENANTS = 20;

describe('adversary: a row labelled with the active KEK but sealed under the KEK being retired or destroyed', () => {
  const databases = useTestDatabases(2);
  const scratch = useScratchDirectory('rekey-label-only-');

  /**
   * The state a rotation v1 → v2 leaves (v2 active, v1 decrypt-only, every row labelled v2), with one row whose
   * label says v2 while its DEK is still sealed under v1 (bound to v1, as v1 sealed it). The keyring file holds both.
   */
  async function rotatedWithOneRowStillUnderV1(index: number) {
    const db = databases.db(index);
    const v1 = randomBytes(32);
    const v2 = randomBytes(32);
    const file = path.join(scratch.dir, `keyring-${index}.json`);
    writeKeyringFile(file, 'v2', { v1, v2 });
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', kekFingerprint(v1));
    await registry.register('v2', kekFingerprint(v2));
    await registry.promote('v1', 'v2');
    const dek = randomBytes(32);
    for (let i = 0; i < TENANTS; i++) {
      const tenantId = `tenant-${i}`;
      await db.pool.query('INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, $2, $3)', [
        tenantId,
        'v2',
        wrapDek(v2, 'v2', tenantId, dek),
      ]);
    }
    const stillUnderV1 = wrapDek(v1, 'v1', 'tenant-restored', dek);
    await db.pool.query('INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, $2, $3)', [
      'tenant-restored',
      'v2',
      stillUnderV1,
    ]);
    // The row needs v1: only v1 opens it.
    expect(unwrapDek(v1, 'v1', 'tenant-restored', stillUnderV1).equals(dek)).toBe(true);
    expect(() => unwrapDek(v2, 'v2', 'tenant-restored', stillUnderV1)).toThrow();
    const keyring = FileKeyring.open(file);
    return { db, file, registry, keyring, activities: createActivities({ db: db.pool, keys: keyring }) };
  }

  it("retire refuses to retire v1 while a row labelled v2 is still sealed under v1 (retireKek's proof under the lock tries only the rows labelled v1)", async () => {
    const { registry, keyring, activities } = await rotatedWithOneRowStillUnderV1(0);
    await expect(activities.retireKek({ from: 'v1', restoreWindowMs: 3_600_000 })).rejects.toThrow(/tenant-restored/);
    expect((await registry.require('v1')).state).toBe('decrypt_only');
    keyring.close();
  });

  it('destroy refuses to destroy v1 at the end of its window while a row labelled v2 is still sealed under v1: the keyring file keeps v1, the only key that opens the row', async () => {
    const { db, file, registry, keyring, activities } = await rotatedWithOneRowStillUnderV1(1);
    // Retired (as a retire that saw only the rows labelled v1 left it), its restore window over.
    await inTransaction(db.pool, (client) => registry.retire('v1', 0, client));

    const report = await activities.destroyKek({ kekId: 'v1' });
    expect(report.outcome, report.detail).toBe('refused');
    expect(report.neededRows?.map((r) => r.tenantId)).toContain('tenant-restored');
    expect((await registry.require('v1')).state).toBe('retired');
    const after = FileKeyring.open(file);
    expect(await storedIds(after)).toContain('v1');
    after.close();
    keyring.close();
  });
});
