// The rewrapSlice activity as Temporal runs it, in a MockActivityEnvironment over real PostgreSQL: cancelled after its
// first batch (a pause), it stops at that batch boundary with its work committed and answers with it; a run of the
// same part again (a retry) resumes from the committed progress row, and every row is counted exactly once.
import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import type { RewrapSliceArgs, SliceOutcome } from '../../src/activities/rewrap';
import { seedTenants } from '../../src/dev/tenants';
import { RekeyMetrics } from '../../src/observability/metrics';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { createTestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { fingerprintIn } from '../helpers/store-keys';

const TENANTS = 2_000;

describe('the rewrapSlice activity in a MockActivityEnvironment', () => {
  it('cancelled after a batch it stops there and answers with what it did; run again under the same key it resumes and counts each row once', async () => {
    const db = await createTestDatabase();
    const keys = testKeys(['v1', 'v2'], 'v1');
    try {
      const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
      await registry.seedActive('v1', await fingerprintIn(keys, 'v1'));
      await seedTenants({ db: db.pool, keys, kekId: 'v1', count: TENANTS });
      await registry.register('v2', await fingerprintIn(keys, 'v2'));
      await registry.promote('v1', 'v2');
      const metrics = new RekeyMetrics();
      const activities = createActivities({ db: db.pool, keys, metrics });
      const args: RewrapSliceArgs = {
        from: 'v1',
        to: 'v2',
        range: { after: '', until: null },
        batchSize: 100,
        dryRun: false,
        timeBudgetMs: 60_000,
        progressKey: 'run/pass-1/slice-0/part-0',
        countExisting: true,
      };

      const paused = new MockActivityEnvironment();
      const heartbeats: unknown[] = [];
      paused.on('heartbeat', (details: unknown) => {
        heartbeats.push(details);
        if (heartbeats.length === 1) paused.cancel();
      });
      // It answers with what it committed before it saw the cancellation, so the run counts it: not a bare
      // cancellation, which left those batches out of the run's report.
      const stopped: SliceOutcome = await paused.run((a: RewrapSliceArgs) => activities.rewrapSlice(a), args);
      const movedBeforePause = TENANTS - (await new TenantDekStore(db.pool).countOnKek('v1'));
      expect(movedBeforePause).toBeGreaterThanOrEqual(100);
      expect(movedBeforePause).toBeLessThan(TENANTS);
      expect(stopped.done).toBe(false);
      expect(stopped.counters.rewrapped).toBe(movedBeforePause);
      expect(stopped.cursor).not.toBe('');

      const resumed: SliceOutcome = await new MockActivityEnvironment().run(
        (a: RewrapSliceArgs) => activities.rewrapSlice(a),
        args,
      );
      expect(resumed.done).toBe(true);
      expect(await new TenantDekStore(db.pool).countOnKek('v1')).toBe(0);
      const { rows } = await db.pool.query<{ rewrapped: string }>(
        'SELECT rewrapped FROM rekey.rewrap_progress WHERE progress_key = $1',
        [args.progressKey],
      );
      expect(Number(rows[0]?.rewrapped)).toBe(TENANTS);
      // The metric counts every batch of both attempts once (it missed each attempt's first batch before).
      expect((await metrics.rewrapped.get()).values[0]?.value).toBe(TENANTS);
    } finally {
      keys.close();
      await db.drop();
    }
  });

  it('Finding 11: an unreadable row is counted once by the metric, however many passes try it', async () => {
    const db = await createTestDatabase();
    const keys = testKeys(['v1', 'v2'], 'v1');
    try {
      const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
      await registry.seedActive('v1', await fingerprintIn(keys, 'v1'));
      await seedTenants({ db: db.pool, keys, kekId: 'v1', count: 300 });
      await db.pool.query(
        `UPDATE rekey.tenant_deks SET wrapped_dek = set_byte(wrapped_dek, 30, get_byte(wrapped_dek, 30) # 1) WHERE tenant_id = 'tenant-00000042'`,
      );
      await registry.register('v2', await fingerprintIn(keys, 'v2'));
      await registry.promote('v1', 'v2');
      const metrics = new RekeyMetrics();
      const activities = createActivities({ db: db.pool, keys, metrics });
      for (const pass of [1, 2, 3]) {
        const outcome: SliceOutcome = await new MockActivityEnvironment().run(
          (a: RewrapSliceArgs) => activities.rewrapSlice(a),
          {
            from: 'v1',
            to: 'v2',
            range: { after: '', until: null },
            batchSize: 100,
            dryRun: false,
            timeBudgetMs: 60_000,
            progressKey: `run/pass-${pass}/slice-0/part-0`,
            countExisting: pass === 1,
          },
        );
        expect(outcome.counters.failed).toBe(1);
      }
      expect((await metrics.unreadable.get()).values[0]?.value).toBe(1);
      expect((await metrics.rewrapped.get()).values[0]?.value).toBe(299);
    } finally {
      keys.close();
      await db.drop();
    }
  });
});
