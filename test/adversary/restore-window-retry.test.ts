// Adversary of the restore window the retire step returns (proofs5: the rotation's destruction now waits for the window
// the step says it applied, the registry's restorable_until − retired_at, instead of computing the minimum itself).
// The step raises a window below the minimum that comes with no reason (test/adversary/restore-window-activity), but a
// step that finds its KEK already retired returns the registry's window as it is: "what an earlier attempt applied".
// An earlier attempt of the same step on a build before the minimum (a run validated with restoreWindow 0 before the
// minimum existed, in flight across the upgrade, whose first retire attempt's answer was lost) applied 0: the retry on
// this build returns 0, and the rotation starts the KEK's destruction with a window of 0, where the build before
// waited the minimum. Nothing of the retry holds the minimum: the registry keeps a window that has already ended, so
// `rekey keys restore` is refused and the destroy step destroys at once. Against PostgreSQL, through the worker's
// activities.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { parseDuration } from '../../src/rotation/durations';
import { MIN_RESTORE_WINDOW } from '../../src/rotation/rotation-input';
import { inTransaction } from '../../src/store/connect';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { useTestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { wrapRekeyDek } from '../helpers/rekey-format';

describe('adversary: the retire step retried after an earlier attempt retired the KEK with a window of 0 and no reason', () => {
  const db = useTestDatabase();

  it('returns at least the minimum restore window, the registry holds it, and the destroy step right after answers not-yet', async () => {
    const { provider, env } = createTestKeys(['v1', 'v2'], 'v2');
    const v2 = Buffer.from(env.TEST_KEK_v2!, 'base64url');
    const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
    await registry.seedActive('v1', kekFingerprint(Buffer.from(env.TEST_KEK_v1!, 'base64url')));
    await registry.register('v2', kekFingerprint(v2));
    await registry.promote('v1', 'v2');
    for (let i = 0; i < 5; i++) {
      await db.pool.query(`INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) VALUES ($1, 'v2', $2)`, [
        `tenant-${i}`,
        wrapRekeyDek(v2, 'v2', `tenant-${i}`, randomBytes(32)),
      ]);
    }
    // The first attempt, on a build that applied the run's window as given: v1 retired with a window of 0.
    await inTransaction(db.pool, (client) => registry.retire('v1', 0, client));
    const activities = createActivities({ db: db.pool, keys: provider });

    // Its retry on this build: the same arguments (the run's window of 0, no reason).
    const retried = await activities.retireKek({ from: 'v1', restoreWindowMs: 0 });
    const minimum = parseDuration(MIN_RESTORE_WINDOW)!;
    expect((retried as { restoreWindowMs?: number }).restoreWindowMs ?? 0).toBeGreaterThanOrEqual(minimum);
    const v1 = await registry.require('v1');
    expect(v1.restorableUntil!.getTime() - v1.retiredAt!.getTime()).toBeGreaterThanOrEqual(minimum);
    const report = await activities.destroyKek({ kekId: 'v1' });
    expect(report.outcome, report.detail).toBe('not-yet');
    expect((await registry.require('v1')).state).toBe('retired');
    provider.close();
  });
});
