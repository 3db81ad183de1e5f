// The migration workflow (`rekey migrate-dek`): plan → migrate (passes of parallel parts, row by row) → done.
// It moves every legacy value of a target's encrypted fields (sealed by the KEK itself, Mycelium's v1) to the current
// form under the tenant's DEK, provisioning missing DEKs. Thin and deterministic like rotateKek: the activities do all
// I/O and crypto (src/activities/migrate.ts); this file sequences them, holds the counts, and answers messages.
import {
  CancellationScope,
  condition,
  allHandlersFinished,
  ContinueAsNew,
  isCancellation,
  patched,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import { parseDuration } from '../rotation/durations';
import type { MigrationReport } from '../rotation/migration-report';
import { explainFailure, steps } from './activity-proxies';
import { setControlHandlers } from './controls';
import {
  abortMigrationUpdate,
  abortSignal,
  migrationPlannedUpdate,
  migrationProgressQuery,
  pauseMigrationUpdate,
  pauseSignal,
  resumeMigrationUpdate,
  resumeSignal,
} from './messages';
import {
  MigrationState,
  type MigrationCarried,
  type MigrationRequest,
  type MigrationSettings,
} from './migration-state';
import { recordEnd } from './run-record';
import { PAUSED_BOUND_PATCH, runMigrationParts } from './slice-scheduler';
import { migrationRunStatus } from '../rotation/run-status';
import { ControlRefusedError } from '../errors';

export type { FieldReport, MigrationReport } from '../rotation/migration-report';
export type { MigrationCarried, MigrationRequest } from './migration-state';

/**
 * Marks runs whose passes are planned by row: every legacy field of a row read, sealed and written in one pass (one
 * statement per batch, one compare-and-swap per row). Runs started before it plan a part per field, one field at a
 * time, and replay as they ran.
 */
export const MIGRATION_ROWS_PATCH = 'migration-rows-1';

const DEFAULTS = { parallelism: 2, batchSize: 1_000, sliceTimeBudget: '30s', maxPasses: 3, maxHistoryEvents: 10_000 };

export async function migrateDek(request: MigrationRequest, carried?: MigrationCarried): Promise<MigrationReport> {
  const state = new MigrationState(request, settingsOf(request), carried);
  setHandler(migrationProgressQuery, () => state.progress());
  // Answers once the first plan is made (or the run ended before it): the report, or the plan step's refusal.
  setHandler(migrationPlannedUpdate, () => state.planned());
  // Each control is an update and a signal with one body (controls.ts): the update's validator refuses, with the
  // reason, what the run cannot honour; the signal notes that refusal in the report. Adds no command.
  const ignored = (signal: string, why: string) => state.ignored(signal, why);
  setControlHandlers(
    pauseMigrationUpdate,
    pauseSignal,
    { refuse: () => refuse(state.refusesPause()), apply: () => (state.pause(), state.progress()) },
    ignored,
  );
  setControlHandlers(resumeMigrationUpdate, resumeSignal, { apply: () => (state.resume(), state.progress()) }, ignored);
  setControlHandlers(
    abortMigrationUpdate,
    abortSignal,
    { refuse: () => refuse(state.refusesAbort()), apply: (reason) => (state.abort(reason), state.progress()) },
    ignored,
  );

  let report: MigrationReport;
  try {
    report = await migrate(state);
  } catch (err) {
    const failure = explainFailure(err);
    // The plan step's refusal is the `migrationPlanned` update's answer: the run fails only once that update has it.
    state.failed(failure);
    await handlersFinished();
    if (!(err instanceof ContinueAsNew) && !isCancellation(err)) {
      // The report says how the run ended (the `progress` query's answer) before anything else happens. No command.
      state.ended(failure);
      await recordMigrationEnd(state, (failure as Error).message ?? String(failure));
    }
    throw failure;
  }
  await handlersFinished();
  await recordMigrationEnd(state);
  return report;
}

function settingsOf(request: MigrationRequest): MigrationSettings {
  return {
    parallelism: request.parallelism ?? DEFAULTS.parallelism,
    batchSize: request.batchSize ?? DEFAULTS.batchSize,
    timeBudgetMs: parseDuration(request.sliceTimeBudget ?? DEFAULTS.sliceTimeBudget) ?? 30_000,
    maxPasses: request.maxPasses ?? DEFAULTS.maxPasses,
    maxHistoryEvents: request.maxHistoryEvents ?? DEFAULTS.maxHistoryEvents,
  };
}

/** A validator's refusal: a typed error whose kind the CLI and the API map to "not now" (exit 4, HTTP 409). */
function refuse(reason: string | undefined): void {
  if (reason !== undefined) throw new ControlRefusedError(reason);
}

/** Waits until every update handler has answered, even when the run is cancelled. Adds no command. */
function handlersFinished(): Promise<void> {
  return CancellationScope.nonCancellable(() => condition(allHandlersFinished));
}

/** The migration's end into rekey's run history, in the one status (a failure with its message). */
function recordMigrationEnd(state: MigrationState, failure?: string): Promise<void> {
  const { report } = state;
  const keyspace = report.keyspace ?? state.request.keyspace;
  return recordEnd({
    target: report.target,
    ...(keyspace !== undefined && { keyspace }),
    kind: 'migration',
    ...(report.kekId !== undefined && { to: report.kekId }),
    startedAt: report.startedAt ?? workflowInfo().runStartTime.getTime(),
    status: migrationRunStatus(
      failure === undefined ? { execution: 'COMPLETED', report } : { execution: 'FAILED', failure, report },
      Date.now(),
    ),
    rowsUnreadable: report.totals.unreadable,
  });
}

/** Passes until nothing is left but what no KEK opens (or the passes are spent): plan, run the parts, count. */
async function migrate(state: MigrationState): Promise<MigrationReport> {
  const { report, request, settings } = state;
  const tenant = request.tenantId !== undefined ? { tenant: request.tenantId } : {};
  for (;;) {
    if (state.carried.pending.length === 0) {
      // Paused between passes: under PAUSED_BOUND_PATCH the wait continues as new once the history passes the bound.
      const bounded = patched(PAUSED_BOUND_PATCH);
      const full = () => bounded && state.shouldContinueAsNew();
      await condition(() => !report.paused || state.aborted || full());
      if (state.aborted) return state.finish('aborted');
      if (report.paused && full()) return state.continueAsNew();
      if (report.passes > 0) {
        const left = (await steps.legacyValuesLeft({ ...state.on, ...tenant })).reduce((n, f) => n + f.legacy, 0);
        report.legacyLeft = left;
        // Done when nothing is left but what the last pass could not read (a writer may have put a value back).
        if (report.dryRun || left <= report.totals.unreadable || report.passes >= settings.maxPasses) {
          return state.finish(report.dryRun ? 'dry-run' : 'completed');
        }
      }
      const plan = await steps.planFieldMigration({
        ...state.on,
        ...(request.kekVersion !== undefined && { kekVersion: request.kekVersion }),
        ...tenant,
        slices: settings.parallelism * 2,
        dryRun: report.dryRun,
        ...(patched(MIGRATION_ROWS_PATCH) && { byRow: true }),
      });
      state.startPass(plan);
    }
    const stopped = await runMigrationParts(state);
    if (stopped === 'aborted') return state.finish('aborted');
    if (stopped === 'continue-as-new') return state.continueAsNew();
  }
}
