// Adversary of the minimum restore window (issue 26's theme: every irreversible step leaves a way back; safety4's
// refuseShortRestoreWindow). A window of 0 means the destruction may follow the retirement at once. The minimum is
// checked where a rotation starts (startRotation for the CLI and the admin API, and the validate step), never when a
// run goes on: a rotation validated by an earlier build (in flight across the upgrade, continued as new, or reset past
// its validate step) carries its window of 0 in its own state and retires with it, with no reason recorded anywhere.
// The retire step is where the window is written, and the only place every run passes: given a window of 0 and no
// reason it must not leave the KEK destroyable the moment it is retired. Against PostgreSQL and the keyring file,
// through the worker's activities.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint, wrapDek } from '../../src/envelope/dek-wrapping';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { useScratchDirectory, useTestDatabase } from '../helpers/database';
import { writeKeyringFile } from '../helpers/keyring';
import { storedIds } from '../helpers/store-keys';

describe('adversary: the retire step given a restore window of 0 and no reason (a run validated before the minimum existed)', () => {
  const db = useTestDatabase();
  const scratch = useScratchDirectory('rekey-window-');

  it('leaves no KEK destroyable at the moment it is retired (it is retired with a window that has not ended, or not retired at all): the destroy step right after it answers not-yet, and the keyring file keeps v1', async () => {
    const v1 = randomBytes(32);
    const v2 = randomBytes(32);
    const file = path.join(scratch.dir, 'keyring.json');
    writeKeyringFile(file, 'v2', { v1, v2 });
    // A rotation v1 → v2 that moved every row: v2 active, v1 decrypt-only, no row under v1.
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', kekFingerprint(v1));
    await registry.register('v2', kekFingerprint(v2));
    await registry.promote('v1', 'v2');
    for (let i = 0; i < 5; i++) {
      await db.pool.query('INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, $2, $3)', [
        `tenant-${i}`,
        'v2',
        wrapDek(v2, 'v2', `tenant-${i}`, randomBytes(32)),
      ]);
    }
    const keyring = FileKeyring.open(file);
    const activities = createActivities({ db: db.pool, keys: keyring });

    // The step as a run recorded with restoreWindow '0s' calls it. Refusing is a way back too: v1 stays decrypt-only.
    const retired = await activities.retireKek({ from: 'v1', restoreWindowMs: 0 }).then(
      () => true,
      () => false,
    );
    if (retired) {
      const record = await registry.require('v1');
      expect(record.state).toBe('retired');
      expect(record.restorableUntil!.getTime()).toBeGreaterThan(record.retiredAt!.getTime());
      const report = await activities.destroyKek({ kekId: 'v1' });
      expect(report.outcome, report.detail).toBe('not-yet');
      expect((await registry.require('v1')).state).toBe('retired');
    } else {
      expect((await registry.require('v1')).state).toBe('decrypt_only');
    }
    const after = FileKeyring.open(file);
    expect(await storedIds(after)).toContain('v1');
    after.close();
    keyring.close();
  });
});
