import { Context } from '@temporalio/activity';
import { emptyCounters, type RewrapCounters } from '../rewrap/counters';
import { rewrapSlice, type RewrapCheckpoint, type TenantFailure } from '../rewrap/rewrap-slice';
import { rowsLabelled } from '../rewrap/still-on';
import { addChecks, emptyCheck, NAMED_CHECKED, type LabelCheck, type LabelCheckOutcome } from '../rotation/label-check';
import { passOfProgressKey, rangesFromBoundaries, type TenantRange } from '../rotation/slices';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { withKeks } from './keys';
import type { EngineKek } from '../keyring/cipher';
import type { TargetStore } from '../store/target-store';
import type { VerifiedUnder } from '../rotation/verified-mark';

export interface SlicePlan {
  /** Rows on `from` right now. */
  stale: number;
  ranges: TenantRange[];
}

export interface RewrapSliceArgs {
  /** Absent in inputs recorded before targets existed: rekey's own. */
  target?: string;
  /** The keyspace the run belongs to, which this worker's target must be; absent in runs before keyspaces. */
  keyspace?: string;
  from: string;
  to: string;
  range: TenantRange;
  /** A canary's one row. */
  tenantId?: string;
  batchSize: number;
  dryRun: boolean;
  timeBudgetMs: number;
  /** Unique per slice part; a retry of the same part resumes from its committed progress. */
  progressKey: string;
  /** Count what is already on `to` or another KEK first: only for the first part of a first-pass slice. */
  countExisting: boolean;
  /** 'others': the rows labelled with neither KEK, tried under `from` (absent: the rows labelled `from`). */
  scan?: 'from' | 'others';
}

export interface SliceOutcome {
  counters: RewrapCounters;
  cursor: string;
  done: boolean;
  failures: TenantFailure[];
  contendedTenants: string[];
}

export interface VerifyOutcome {
  /** Rows labelled `from` whose value is under `from` (or under neither): they still need it. */
  stale: number;
  /** Rows labelled `from` whose value is under `to`: only their label is wrong; they do not need `from`. */
  mislabelled?: number;
  /** Rows labelled with neither KEK that open under `from`: on it in fact; another pass moves them. */
  hidden?: number;
  sampled: number;
  unreadable: TenantFailure[];
}

const HIDDEN_SCAN_BATCH = 2_000;

export function createRewrapActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);
  const { metrics } = deps;

  return {
    /** Splits the rows still on `from` into up to `slices` ranges of about equal size. */
    async planSlices({
      from,
      slices,
      tenantId,
      ...on
    }: {
      from: string;
      slices: number;
      tenantId?: string;
      target?: string;
      keyspace?: string;
    }): Promise<SlicePlan> {
      const { store } = await targets.forRequest(on);
      if (tenantId !== undefined) {
        return { stale: await store.countOnLabel(from, store.db, tenantId), ranges: [{ after: '', until: null }] };
      }
      const stale = await store.countOnLabel(from);
      if (slices <= 1 || stale < slices * 2) return { stale, ranges: rangesFromBoundaries([]) };
      const fractions = Array.from({ length: slices - 1 }, (_, i) => (i + 1) / slices);
      return { stale, ranges: rangesFromBoundaries(await store.boundaries(from, fractions)) };
    },

    /**
     * One part of one slice: rewraps until the range is done or the time budget is spent. Heartbeats its cursor and
     * counters after every batch, and every few seconds during a long one; stops at a batch boundary when cancelled
     * (pause, abort).
     */
    async rewrapSlice(args: RewrapSliceArgs): Promise<SliceOutcome> {
      const context = Context.current();
      const resumeFrom = context.info.heartbeatDetails as RewrapCheckpoint | undefined;
      const runtime = await targets.forRequest(args);
      // Metrics add each batch's difference from the one before, starting from where this attempt picked up.
      let previous: RewrapCounters = emptyCounters();
      const canary = args.tenantId !== undefined;
      const firstPass = (passOfProgressKey(args.progressKey) ?? 1) === 1;
      const result = await withKeks(runtime, args, [args.from, args.to], deps.crypto, ([from, to], crypto) =>
        rewrapSlice(
          // A canary writes under the still-provisioned KEK; anything else only under the active one.
          {
            store: runtime.store,
            from: from!,
            to: to!,
            writable: canary ? ['active', 'provisioned'] : ['active'],
            crypto,
          },
          {
            after: args.range.after,
            until: args.range.until,
            rowId: args.tenantId,
            scan: args.scan,
            batchSize: args.batchSize,
            dryRun: args.dryRun,
            timeBudgetMs: args.timeBudgetMs,
            progressKey: args.progressKey,
            countExisting: args.countExisting,
            resumeFrom,
          },
          {
            onStart: (counters) => {
              previous = counters;
            },
            onBatch: (checkpoint) => {
              context.heartbeat(checkpoint);
              metrics?.recordBatch(previous, checkpoint.counters, firstPass);
              previous = checkpoint.counters;
            },
            // A batch paced by a remote key store may outlast the heartbeat timeout: the last checkpoint again.
            onAlive: (checkpoint) => context.heartbeat(checkpoint),
            shouldStop: () => context.cancellationSignal.aborted,
          },
        ),
      );
      // Cancelled (paused or aborted), the slice stopped at a batch boundary: it returns what it did, so that the run
      // counts the batches it committed before it saw the cancellation (its report would otherwise miss them), and
      // goes on later from its cursor as the next part.
      return result;
    },

    /**
     * Nothing left under `from` (rows labelled `from` are tried: one whose value opens under `to` only has a label to
     * put right), no row labelled with another KEK hides under `from`, and a random sample of rows on `to` decrypts
     * with it (a canary: its one row).
     */
    async verifyRotation(args: {
      target?: string;
      keyspace?: string;
      from: string;
      to: string;
      sampleSize: number;
      tenantId?: string;
    }): Promise<VerifyOutcome> {
      const { from, to, sampleSize, tenantId } = args;
      const runtime = await targets.forRequest(args);
      const { store, keyring } = runtime;
      await keyring.reload();
      const rows = await store.sampleOnLabel(to, sampleSize, tenantId);
      const unreadable: TenantFailure[] = [];
      return withKeks(runtime, args, [to, from], deps.crypto, async ([toKek, fromKek], crypto) => {
        (await crypto.check(store.codec, toKek!, rows)).forEach((reason, i) => {
          if (reason !== undefined) unreadable.push({ tenantId: rows[i]!.$id, reason });
        });
        const labelled = await rowsLabelled(store, store.db, crypto, fromKek!, toKek!, tenantId);
        let hidden = 0;
        if (tenantId === undefined) {
          // A label can lie: every row labelled with neither KEK is tried under `from` before `from` may retire.
          let after = '';
          for (;;) {
            const batch = await store.readBatch(
              store.db,
              { kind: 'others', from, to },
              { after, until: null },
              HIDDEN_SCAN_BATCH,
            );
            if (batch.length === 0) break;
            hidden += (await crypto.check(store.codec, fromKek!, batch)).filter(
              (reason) => reason === undefined,
            ).length;
            after = batch[batch.length - 1]!.$id;
            Context.current().heartbeat();
          }
        }
        return {
          stale: labelled.onFrom,
          mislabelled: labelled.mislabelled,
          hidden,
          sampled: rows.length,
          // Rows on `to` that do not decrypt: a failed rotation. Rows still labelled `from` that do not open are part
          // of `stale`, and the passes already named them.
          unreadable,
        };
      });
    },

    /**
     * One part of the check before grace and retire: the rows labelled `to` after `after`, in id order, each tried under
     * `to`; one that does not open is tried under `from` to say whether its label hides a value `from` still seals.
     * Reads only. Heartbeats its checkpoint after every batch and resumes from it; stops at a batch boundary after
     * `timeBudgetMs`, or when cancelled.
     */
    async checkLabelled(args: {
      target?: string;
      keyspace?: string;
      from: string;
      to: string;
      after: string;
      batchSize: number;
      timeBudgetMs: number;
    }): Promise<LabelCheckOutcome> {
      const { from, to } = args;
      const runtime = await targets.forRequest(args);
      const { store, keyring } = runtime;
      const context = activityContext();
      const resumeFrom = context?.info.heartbeatDetails as { cursor: string; sum: LabelCheck } | undefined;
      await keyring.reload();
      return withKeks(runtime, args, [to, from], deps.crypto, async ([toKek, fromKek], crypto) => {
        const started = Date.now();
        let cursor = resumeFrom?.cursor ?? args.after;
        // What this check proves for retire's pre-pass (verified-mark.ts): the mark is read before the first row, and a
        // resumed attempt keeps its first attempt's (in the heartbeat; none in an older build's heartbeat).
        let sum: LabelCheck = resumeFrom
          ? { ...resumeFrom.sum, verified: resumeFrom.sum.verified ?? null }
          : { ...emptyCheck(), verified: await verifiedMark(store, toKek!) };
        // A batch paced by a remote key store (a KMS call per row) may outlast the heartbeat timeout: the last
        // checkpoint again meanwhile, or the attempt is taken for lost and its rows tried again (the quota spent twice).
        const alive = context && setInterval(() => context.heartbeat({ cursor, sum }), CHECK_ALIVE_EVERY_MS);
        try {
          return await checkBatches();
        } finally {
          if (alive) clearInterval(alive);
        }
        async function checkBatches(): Promise<LabelCheckOutcome> {
          for (let batches = 0; ; batches++) {
            const stop =
              context?.cancellationSignal.aborted === true ||
              (batches > 0 && Date.now() - started >= args.timeBudgetMs);
            if (stop) return { ...sum, cursor, done: false };
            const rows = await store.readBatch(
              store.db,
              { kind: 'label', kekId: to },
              { after: cursor, until: null },
              args.batchSize,
            );
            if (rows.length === 0) return { ...sum, cursor, done: true };
            const underTo = await crypto.check(store.codec, toKek!, rows);
            const unreadable = rows.flatMap((row, i) =>
              underTo[i] === undefined ? [] : [{ row, reason: underTo[i] }],
            );
            const underFrom = await crypto.check(
              store.codec,
              fromKek!,
              unreadable.map(({ row }) => row),
            );
            const batch: LabelCheck = {
              ...emptyCheck(),
              checked: rows.length,
              unreadable: unreadable.length,
              verified: sum.verified ?? null,
            };
            unreadable.forEach(({ row, reason }, i) => {
              const sealedUnderFrom = underFrom[i] === undefined;
              if (sealedUnderFrom) batch.underFrom += 1;
              if (sum.named.length + batch.named.length >= NAMED_CHECKED) return;
              batch.named.push({
                tenantId: row.$id,
                reason: sealedUnderFrom
                  ? `labelled '${to}', its value is under '${from}'`
                  : `opens under neither '${to}' (${reason}) nor '${from}'`,
              });
            });
            sum = addChecks(sum, batch);
            cursor = rows[rows.length - 1]!.$id;
            context?.heartbeat({ cursor, sum });
          }
        }
      });
    },

    async staleTenants({
      from,
      limit,
      ...on
    }: {
      from: string;
      limit: number;
      target?: string;
      keyspace?: string;
    }): Promise<string[]> {
      const { store } = await targets.forRequest(on);
      return store.idsOnLabel(from, limit);
    },
  };
}

/** How often a check of the rows labelled `to` says it is alive while a batch waits on a paced key store. */
const CHECK_ALIVE_EVERY_MS = 5_000;

/**
 * The mark of a check of the rows labelled `to` (VerifiedUnder), read before it reads a row; null where the target's
 * rows carry no transaction id (TargetStore.changeMark) or the database does not say where it is.
 */
async function verifiedMark(store: TargetStore, to: EngineKek): Promise<VerifiedUnder | null> {
  if (to.fingerprint === undefined) return null;
  const now = await store.markNow();
  const mark = await store.changeMark();
  if (now === undefined || 'why' in mark) return null;
  return { kekId: to.kekId, fingerprint: to.fingerprint, mark: mark.mark, scope: now.scope };
}

/** The activity's context, or nothing outside an activity (a test calling it directly). */
function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}
