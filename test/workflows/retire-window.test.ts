// The restore window a retirement applies is decided once, by the retire step, which writes it into the registry and
// says what it applied; the rotation's destruction waits for that window, not for one the workflow computes again.
// Against PostgreSQL, and the time-skipping server where the workflow is involved.
import { Context } from '@temporalio/activity';
import { describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import type { DestroyKekInput } from '../../src/workflows/destroy-kek';
import { createTestDatabase } from '../helpers/database';
import { createTestKeys } from '../helpers/keys';
import { fingerprintIn } from '../helpers/store-keys';
import { destroyIdIn } from '../helpers/keyspace';
import { RotationFixture } from '../helpers/rotation-fixture';
import { useTimeSkippingEnv } from '../helpers/temporal';

const DAY = 86_400_000;

describe('the retire step says which restore window it applied, and the destruction waits for that one', () => {
  const server = useTimeSkippingEnv();

  it('retireKek returns the window it wrote: asked 0 without a reason, the minimum of a day; asked 0 with one, 0', async () => {
    for (const [reason, expected] of [
      [undefined, DAY],
      ['destroyed at once on purpose (test)', 0],
    ] as const) {
      const db = await createTestDatabase();
      try {
        const { provider } = createTestKeys(['v1', 'v2'], 'v1');
        const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
        await registry.seedActive('v1', await fingerprintIn(provider, 'v1'));
        await registry.register('v2', await fingerprintIn(provider, 'v2'));
        await registry.promote('v1', 'v2');
        const activities = createActivities({ db: db.pool, keys: provider });
        const result = await activities.retireKek({
          from: 'v1',
          restoreWindowMs: 0,
          ...(reason !== undefined && { allowShortRestoreWindow: reason }),
        });
        expect(result.restoreWindowMs).toBe(expected);
        const v1 = await registry.require('v1');
        expect(v1.restorableUntil!.getTime() - v1.retiredAt!.getTime()).toBe(expected);
      } finally {
        await db.drop();
      }
    }
  });

  it("a rotation's destruction waits for the window the retire step applied and returned (here 3d, where the run asked 2d), as the registry holds it", async () => {
    const fixture = await RotationFixture.create({ tenants: 50 });
    try {
      const real = fixture.activities();
      const returned: (number | undefined)[] = [];
      const activities = {
        ...real,
        // A worker whose step applies another window than the run asked (another build's policy): what it applied
        // is what the registry holds, and what the destruction must wait for.
        async retireKek(args: Parameters<typeof real.retireKek>[0]) {
          expect(Context.current().info.activityType).toBe('retireKek');
          const result = await real.retireKek({ ...args, restoreWindowMs: 3 * DAY });
          returned.push(result.restoreWindowMs);
          return result;
        },
      };
      const report = await fixture.execute(
        server.env,
        { from: 'v1', to: 'v2', gracePeriod: '1s', restoreWindow: '2d' },
        activities,
      );
      expect(report.outcome).toBe('completed');
      expect(returned).toEqual([3 * DAY]);
      const v1 = await new KekRegistry(fixture.db.pool, BUILTIN_TARGET).require('v1');
      expect(v1.restorableUntil!.getTime() - v1.retiredAt!.getTime()).toBe(3 * DAY);
      const history = await server.env.client.workflow
        .getHandle(await destroyIdIn(fixture.db.pool, 'v1'))
        .fetchHistory();
      const input = history.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0]?.data;
      const destroyInput = JSON.parse(Buffer.from(input!).toString()) as DestroyKekInput;
      expect(destroyInput.restoreWindowMs).toBe(3 * DAY);
    } finally {
      await fixture.drop();
    }
  });
});
