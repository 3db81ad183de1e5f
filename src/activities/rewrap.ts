import { Context } from '@temporalio/activity';
import type { RewrapCounters } from '../rewrap/counters';
import { rewrapSlice, type RewrapCheckpoint, type TenantFailure } from '../rewrap/rewrap-slice';
import { rangesFromBoundaries, type TenantRange } from '../rotation/slices';
import { TenantDekStore } from '../store/tenant-deks';
import type { ActivityDependencies } from './dependencies';

export interface SlicePlan {
  /** DEKs on `from` right now. */
  stale: number;
  ranges: TenantRange[];
}

export interface RewrapSliceArgs {
  from: string;
  to: string;
  range: TenantRange;
  tenantId?: string;
  batchSize: number;
  dryRun: boolean;
  timeBudgetMs: number;
  /** Unique per slice part; a retry of the same part resumes from its committed progress. */
  progressKey: string;
  /** Count what is already on `to` or another KEK first: only for the first part of a first-pass slice. */
  countExisting: boolean;
}

export interface SliceOutcome {
  counters: RewrapCounters;
  cursor: string;
  done: boolean;
  failures: TenantFailure[];
  contendedTenants: string[];
}

export interface VerifyOutcome {
  stale: number;
  sampled: number;
  unreadable: TenantFailure[];
}

export function createRewrapActivities({ db, keys, metrics }: ActivityDependencies) {
  const deks = new TenantDekStore(db);

  return {
    /** Splits the DEKs still on `from` into up to `slices` ranges of about equal size. */
    async planSlices({
      from,
      slices,
      tenantId,
    }: {
      from: string;
      slices: number;
      tenantId?: string;
    }): Promise<SlicePlan> {
      if (tenantId !== undefined) {
        const stale = (await deks.find(tenantId))?.kekId === from ? 1 : 0;
        return { stale, ranges: [{ after: '', until: null }] };
      }
      const stale = await deks.countOnKek(from);
      if (slices <= 1 || stale < slices * 2) return { stale, ranges: rangesFromBoundaries([]) };
      const fractions = Array.from({ length: slices - 1 }, (_, i) => (i + 1) / slices);
      const { rows } = await db.query<{ boundaries: string[] | null }>(
        `SELECT percentile_disc($2::float8[]) WITHIN GROUP (ORDER BY tenant_id) AS boundaries
         FROM rekey.tenant_deks WHERE kek_id = $1`,
        [from, fractions],
      );
      return { stale, ranges: rangesFromBoundaries(rows[0]?.boundaries ?? []) };
    },

    /**
     * One part of one slice: rewraps until the range is done or the time budget is spent. Heartbeats its cursor and
     * counters after every batch; stops at a batch boundary when cancelled (pause, abort).
     */
    async rewrapSlice(args: RewrapSliceArgs): Promise<SliceOutcome> {
      const context = Context.current();
      const resumeFrom = context.info.heartbeatDetails as RewrapCheckpoint | undefined;
      let previous: RewrapCounters | undefined;
      const result = await rewrapSlice(
        { db, keys },
        {
          from: args.from,
          to: args.to,
          after: args.range.after,
          until: args.range.until,
          tenantId: args.tenantId,
          batchSize: args.batchSize,
          dryRun: args.dryRun,
          timeBudgetMs: args.timeBudgetMs,
          progressKey: args.progressKey,
          countExisting: args.countExisting,
          resumeFrom,
        },
        {
          onBatch: (checkpoint) => {
            context.heartbeat(checkpoint);
            if (previous) metrics?.recordBatch(previous, checkpoint.counters);
            previous = checkpoint.counters;
          },
          shouldStop: () => context.cancellationSignal.aborted,
        },
      );
      // Cancelled (paused or aborted): what was done is committed with its progress row; the next run of this part
      // resumes from there.
      if (context.cancellationSignal.aborted) throw context.cancellationSignal.reason;
      return result;
    },

    /** Nothing left on `from`, and a random sample of DEKs on `to` unwraps (for a canary: its one tenant). */
    async verifyRotation(args: {
      from: string;
      to: string;
      sampleSize: number;
      tenantId?: string;
    }): Promise<VerifyOutcome> {
      const { from, to, sampleSize, tenantId } = args;
      await keys.reload();
      const tenant = tenantId ?? null;
      const { rows: counted } = await db.query<{ n: string }>(
        'SELECT count(*) AS n FROM rekey.tenant_deks WHERE kek_id = $1 AND ($2::text IS NULL OR tenant_id = $2)',
        [from, tenant],
      );
      const { rows } = await db.query<{ tenant_id: string; wrapped_dek: Buffer }>(
        `SELECT tenant_id, wrapped_dek FROM rekey.tenant_deks WHERE kek_id = $1 AND ($3::text IS NULL OR tenant_id = $3)
         ORDER BY random() LIMIT $2`,
        [to, sampleSize, tenant],
      );
      const unreadable: TenantFailure[] = [];
      for (const row of rows) {
        try {
          keys.unwrap(to, row.tenant_id, row.wrapped_dek).fill(0);
        } catch (err) {
          unreadable.push({ tenantId: row.tenant_id, reason: (err as Error).message });
        }
      }
      return { stale: Number(counted[0]?.n ?? 0), sampled: rows.length, unreadable };
    },

    async staleTenants({ from, limit }: { from: string; limit: number }): Promise<string[]> {
      return deks.tenantsOnKek(from, limit);
    },
  };
}
