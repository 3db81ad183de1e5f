// The migration workflow (`rekey migrate-dek`): plan → migrate (passes of parallel parts, field by field) → done.
// It moves every legacy value of a target's encrypted fields (sealed by the KEK itself, Mycelium's v1) to the current
// form under the tenant's DEK, provisioning missing DEKs. Thin and deterministic like rotateKek: the activities do all
// I/O and crypto (src/activities/migrate.ts); this file sequences them, holds the counts, and answers messages.
import {
  allHandlersFinished,
  CancellationScope,
  condition,
  ContinueAsNew,
  continueAsNew,
  isCancellation,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { FieldPlan, MigrationPlan } from '../activities/migrate';
import { parseDuration } from '../rotation/durations';
import type { TenantRange } from '../rotation/slices';
import { addFieldCounters, emptyFieldCounters } from '../rewrap/field-counters';
import type { MigrationReport } from '../rotation/migration-report';
import { explainFailure, slices, steps } from './activity-proxies';
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
import { recordEnd } from './run-record';
import { migrationRunStatus } from '../rotation/run-status';

export type { FieldReport, MigrationReport } from '../rotation/migration-report';

export interface MigrationRequest {
  target: string;
  /** The keyspace the target was when the run was started (`<database id>/<schema.table>`); every step checks it. */
  keyspace?: string;
  /** The generation (KEK id) the application's current key is, when rekey's registry has none recorded yet. */
  kekVersion?: string;
  /** Only the values under this tenant's DEK (Mycelium's `--tenant-id`); the system tenant's for TOTP and webhooks. */
  tenantId?: string;
  /** Decrypt and count every legacy value, list the tenants holding them, write nothing. */
  dryRun?: boolean;
  parallelism?: number;
  batchSize?: number;
  sliceTimeBudget?: string;
  maxPasses?: number;
  /** Continue-as-new after this many history events even if the server does not suggest it (tests). */
  maxHistoryEvents?: number;
}

interface Part {
  field: number;
  range: TenantRange;
  /** Which run of the slice: a part stopped by its time budget goes on as the next part, from its cursor. */
  part: number;
  slice: string;
  countExisting: boolean;
}

export interface MigrationCarried {
  report: MigrationReport;
  pending: Part[];
  runKey: string;
}

const DEFAULTS = { parallelism: 2, batchSize: 1_000, sliceTimeBudget: '30s', maxPasses: 3, maxHistoryEvents: 10_000 };
const MAX_FAILURES = 100;

export async function migrateDek(request: MigrationRequest, carried?: MigrationCarried): Promise<MigrationReport> {
  // The plan step's refusal is the `migrationPlanned` update's answer: the run fails only once that update has it.
  const verdict: Verdict = { refusal: undefined };
  const seen: { report?: MigrationReport } = {};
  let report: MigrationReport;
  try {
    report = await migrate(request, verdict, carried, seen);
  } catch (err) {
    const failure = explainFailure(err);
    if (!verdict.planned) verdict.refusal = failure instanceof Error ? failure : new Error(String(failure));
    await handlersFinished();
    if (!(err instanceof ContinueAsNew) && !isCancellation(err)) {
      await recordMigrationEnd(request, seen.report, (failure as Error).message ?? String(failure));
    }
    throw failure;
  }
  await handlersFinished();
  await recordMigrationEnd(request, report);
  return report;
}

/** Whether the first plan was made, and the failure that came before it (the run's refusal). */
interface Verdict {
  planned?: boolean;
  refusal: Error | undefined;
}

/** Waits until every update handler has answered, even when the run is cancelled. Adds no command. */
function handlersFinished(): Promise<void> {
  return CancellationScope.nonCancellable(() => condition(allHandlersFinished));
}

/** The migration's end into rekey's run history, in the one status (a failure with its message). */
function recordMigrationEnd(request: MigrationRequest, report?: MigrationReport, failure?: string): Promise<void> {
  const keyspace = report?.keyspace ?? request.keyspace;
  return recordEnd({
    target: request.target,
    ...(keyspace !== undefined && { keyspace }),
    kind: 'migration',
    ...(report?.kekId !== undefined && { to: report.kekId }),
    startedAt: report?.startedAt ?? workflowInfo().runStartTime.getTime(),
    status: migrationRunStatus(
      failure === undefined ? { execution: 'COMPLETED', report } : { execution: 'FAILED', failure, report },
      Date.now(),
    ),
    rowsUnreadable: report?.totals.unreadable ?? 0,
  });
}

async function migrate(
  request: MigrationRequest,
  verdict: Verdict,
  carried: MigrationCarried | undefined,
  seen: { report?: MigrationReport },
): Promise<MigrationReport> {
  const settings = {
    parallelism: request.parallelism ?? DEFAULTS.parallelism,
    batchSize: request.batchSize ?? DEFAULTS.batchSize,
    timeBudgetMs: parseDuration(request.sliceTimeBudget ?? DEFAULTS.sliceTimeBudget) ?? 30_000,
    maxPasses: request.maxPasses ?? DEFAULTS.maxPasses,
    maxHistoryEvents: request.maxHistoryEvents ?? DEFAULTS.maxHistoryEvents,
  };
  const state: MigrationCarried = carried ?? {
    report: {
      target: request.target,
      ...(request.keyspace !== undefined && { keyspace: request.keyspace }),
      startedAt: Date.now(),
      dryRun: request.dryRun ?? false,
      ...(request.tenantId !== undefined && { tenantId: request.tenantId }),
      phase: 'planning',
      paused: false,
      passes: 0,
      fields: [],
      totals: emptyFieldCounters(),
      failures: [],
    },
    pending: [],
    runKey: `${workflowInfo().workflowId}@${workflowInfo().firstExecutionRunId}`,
  };
  const { report } = state;
  seen.report = report;
  const tenant = request.tenantId !== undefined ? { tenant: request.tenantId } : {};
  let aborted = false;
  const running = new Map<string, CancellationScope>();
  const stopRunning = () => running.forEach((scope) => scope.cancel());

  const pause = () => {
    report.paused = true;
    stopRunning();
  };
  const resume = () => {
    report.paused = false;
  };
  const abort = (reason?: string) => {
    aborted = true;
    report.abortReason = reason || 'aborted by an operator';
    stopRunning();
  };
  const answering = (control: () => void) => () => {
    control();
    return report;
  };
  setHandler(migrationProgressQuery, () => ({ ...report, partsRunning: running.size }));
  setHandler(pauseSignal, pause);
  setHandler(resumeSignal, resume);
  setHandler(abortSignal, abort);
  setHandler(pauseMigrationUpdate, answering(pause));
  setHandler(resumeMigrationUpdate, answering(resume));
  setHandler(abortMigrationUpdate, (reason) => answering(() => abort(reason))());
  // Answers once the first plan is made (or the run ended before it): the report, or the plan step's refusal.
  verdict.planned = report.phase !== 'planning';
  setHandler(migrationPlannedUpdate, async () => {
    await condition(() => verdict.refusal !== undefined || report.phase !== 'planning');
    if (verdict.refusal !== undefined) throw verdict.refusal;
    return report;
  });

  const finish = (outcome: MigrationReport['outcome']): MigrationReport => {
    report.phase = 'done';
    report.outcome = outcome;
    return report;
  };

  for (;;) {
    if (state.pending.length === 0) {
      await condition(() => !report.paused || aborted);
      if (aborted) return finish('aborted');
      if (report.passes > 0) {
        const left = (await steps.legacyValuesLeft({ ...on(report), ...tenant })).reduce((n, f) => n + f.legacy, 0);
        report.legacyLeft = left;
        // Done when nothing is left but what the last pass could not read (a writer may have put a value back).
        if (report.dryRun || left <= report.totals.unreadable || report.passes >= settings.maxPasses) {
          return finish(report.dryRun ? 'dry-run' : 'completed');
        }
      }
      const plan = await steps.planFieldMigration({
        ...on(report),
        ...(request.kekVersion !== undefined && { kekVersion: request.kekVersion }),
        ...tenant,
        slices: settings.parallelism * 2,
        dryRun: report.dryRun,
      });
      startPass(state, plan);
      verdict.planned = true;
    }
    const stopped = await runParts(state, settings, running, () => aborted);
    if (stopped === 'aborted') return finish('aborted');
    if (stopped === 'continue-as-new') return continueAsNew<typeof migrateDek>(request, state);
  }
}

function startPass(state: MigrationCarried, plan: MigrationPlan): void {
  const { report } = state;
  report.passes += 1;
  report.phase = 'migrating';
  report.kekId = plan.kekId;
  if (report.passes === 1) {
    report.tenants = plan.tenants;
    report.fields = plan.fields.map((f: FieldPlan) => ({
      name: f.name,
      group: f.group,
      where: f.where,
      legacyAtStart: f.legacy,
      counters: emptyFieldCounters(),
    }));
    if (plan.byTenant) report.byTenant = plan.byTenant;
    if (plan.kekChoice) report.kekChoice = plan.kekChoice;
  }
  // Every pass tries every legacy value, unreadable ones included: what is unreadable is what this pass finds.
  for (const field of report.fields) field.counters.unreadable = 0;
  report.totals.unreadable = 0;
  report.failures = [];
  state.pending = plan.fields.flatMap((f) =>
    f.ranges.map((range, i) => ({
      field: f.field,
      range,
      part: 0,
      slice: `${state.runKey}/pass-${report.passes}/field-${f.field}/slice-${i}`,
      countExisting: report.passes === 1,
    })),
  );
}

/**
 * Runs the pending parts, at most `parallelism` at once and one field at a time (two fields of one row must not
 * lock the same rows in two orders), until none is left or the run must stop.
 */
/** What every activity input names: the target, and the keyspace its worker must resolve it to (when known). */
function on(report: MigrationReport): { target: string; keyspace?: string } {
  return report.keyspace === undefined
    ? { target: report.target }
    : { target: report.target, keyspace: report.keyspace };
}

async function runParts(
  state: MigrationCarried,
  settings: { parallelism: number; batchSize: number; timeBudgetMs: number; maxHistoryEvents: number },
  running: Map<string, CancellationScope>,
  aborted: () => boolean,
): Promise<'done' | 'aborted' | 'continue-as-new'> {
  const { report, pending } = state;
  const inFlight = new Set<Promise<void>>();
  let field: number | undefined;
  let failure: Error | undefined;
  for (;;) {
    if (failure !== undefined && inFlight.size === 0) throw failure;
    if (aborted() && inFlight.size === 0) return 'aborted';
    const info = workflowInfo();
    const rotate = info.continueAsNewSuggested || info.historyLength >= settings.maxHistoryEvents;
    if (rotate && inFlight.size === 0) return 'continue-as-new';
    if (inFlight.size === 0) field = pending[0]?.field;
    while (
      failure === undefined &&
      !aborted() &&
      !report.paused &&
      !rotate &&
      inFlight.size < settings.parallelism &&
      pending.length > 0 &&
      pending[0]!.field === field
    ) {
      const part = pending.shift()!;
      const promise: Promise<void> = runPart(state, part, settings, running)
        .catch((err: unknown) => {
          failure ??= err instanceof Error ? err : new Error(String(err));
          running.forEach((scope) => scope.cancel());
        })
        .finally(() => inFlight.delete(promise));
      inFlight.add(promise);
    }
    if (inFlight.size === 0 && pending.length === 0) return 'done';
    const before = { size: inFlight.size, pending: pending.length, paused: report.paused, aborted: aborted() };
    await condition(
      () =>
        inFlight.size !== before.size ||
        pending.length !== before.pending ||
        report.paused !== before.paused ||
        aborted() !== before.aborted,
    );
  }
}

async function runPart(
  state: MigrationCarried,
  part: Part,
  settings: { batchSize: number; timeBudgetMs: number },
  running: Map<string, CancellationScope>,
): Promise<void> {
  const { report } = state;
  const progressKey = `${part.slice}/part-${part.part}`;
  const scope = new CancellationScope();
  running.set(progressKey, scope);
  let outcome;
  try {
    outcome = await scope.run(() =>
      slices.migrateFieldSlice({
        ...on(report),
        field: part.field,
        kekId: report.kekId!,
        range: part.range,
        ...(report.tenantId !== undefined && { tenant: report.tenantId }),
        batchSize: settings.batchSize,
        dryRun: report.dryRun,
        timeBudgetMs: settings.timeBudgetMs,
        progressKey,
        countExisting: part.countExisting && part.part === 0,
      }),
    );
  } catch (err) {
    // Paused or aborted: the part resumes later from its committed progress, under the same key.
    if (!isCancellation(err) && !scope.consideredCancelled) throw err;
    state.pending.unshift(part);
    return;
  } finally {
    running.delete(progressKey);
  }
  // Fields are reported in the target's order: field i of the plan is field i of the report.
  const field = report.fields[part.field]!;
  field.counters = addFieldCounters(field.counters, outcome.counters);
  report.totals = addFieldCounters(report.totals, outcome.counters);
  report.failures.push(...outcome.failures.slice(0, Math.max(0, MAX_FAILURES - report.failures.length)));
  if (!outcome.done) {
    state.pending.unshift({ ...part, range: { ...part.range, after: outcome.cursor }, part: part.part + 1 });
  }
}
