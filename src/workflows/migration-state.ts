// The state of one migration (`rekey migrate-dek`) and what each message does to it, like RotationState for a
// rotation. The workflow (migrate-dek.ts) wires messages to these methods and runs the passes; nothing here schedules
// an activity.
import { allHandlersFinished, CancellationScope, condition, continueAsNew, workflowInfo } from '@temporalio/workflow';
import type { FieldPlan, FieldSliceOutcome, MigrationPlan, RowSliceOutcome } from '../activities/migrate';
import { addFieldCounters, emptyFieldCounters } from '../rewrap/field-counters';
import type { MigrationReport } from '../rotation/migration-report';
import type { TenantRange } from '../rotation/slices';
import { runFailure } from '../errors';

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

export interface MigrationSettings {
  parallelism: number;
  batchSize: number;
  timeBudgetMs: number;
  maxPasses: number;
  maxHistoryEvents: number;
}

/** A part of a slice still to run. Its progress key (`<slice>/part-<part>`) is stable across pauses and continue-as-new. */
export interface MigrationPart {
  /** The field (a part of one field), or the group's first field (a part of rows). */
  field: number;
  /** A part of rows: every legacy field of each row in this group of one table's fields, in one pass (builds after
   * MIGRATION_ROWS_PATCH). Absent: a part of the one field `field`. */
  fields?: number[];
  range: TenantRange;
  /** Which run of the slice: a part stopped by its time budget goes on as the next part, from its cursor. */
  part: number;
  slice: string;
  countExisting: boolean;
}

/** What continue-as-new carries to the next run (the shape every build since migrations began carries). */
export interface MigrationCarried {
  report: MigrationReport;
  pending: MigrationPart[];
  runKey: string;
}

const MAX_FAILURES = 100;

export class MigrationState {
  readonly carried: MigrationCarried;
  /** Not carried: an abort ends the run before it can continue as new. */
  aborted = false;
  private readonly running = new Map<string, CancellationScope>();
  /** The failure the plan step refused the run with (the run ends with it once `migrationPlanned` has it). */
  private refusal: Error | undefined;

  constructor(
    readonly request: MigrationRequest,
    readonly settings: MigrationSettings,
    carried: MigrationCarried | undefined,
  ) {
    this.carried = carried ?? {
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
  }

  get report(): MigrationReport {
    return this.carried.report;
  }

  /** What every activity input names: the target, and the keyspace its worker must resolve it to (when known). */
  get on(): { target: string; keyspace?: string } {
    const { target, keyspace } = this.report;
    return keyspace === undefined ? { target } : { target, keyspace };
  }

  /** The `progress` query's answer, and every control's. */
  progress(): MigrationReport {
    return { ...this.report, partsRunning: this.running.size };
  }

  // ------------------------------------------------------------------ messages

  /** The `migrationPlanned` update: once the first plan is made, the report; or the plan step's refusal. */
  async planned(): Promise<MigrationReport> {
    await condition(() => this.refusal !== undefined || this.report.phase !== 'planning');
    if (this.refusal !== undefined) throw this.refusal;
    return this.report;
  }

  /** A failure before the first plan is the run's refusal: the `migrationPlanned` update answers with it. */
  failed(failure: unknown): void {
    if (this.report.phase !== 'planning') return;
    this.refusal = failure instanceof Error ? failure : new Error(String(failure));
  }

  /** The run failed: its report says so, with the failure's type, kind and message, and it holds no pause. */
  ended(failure: unknown): void {
    this.report.outcome = 'failed';
    this.report.failure = runFailure(failure);
    this.report.paused = false;
  }

  /** Why a pause cannot be honoured now, or undefined when it can. */
  refusesPause(): string | undefined {
    return this.hasEnded();
  }

  /** Why an abort cannot be honoured now, or undefined when it can. */
  refusesAbort(): string | undefined {
    return this.hasEnded();
  }

  private hasEnded(): string | undefined {
    const { phase, outcome } = this.report;
    return phase === 'done' || outcome === 'failed' ? `the migration has ended (${outcome ?? 'done'})` : undefined;
  }

  pause(): void {
    this.report.paused = true;
    this.cancelRunningParts();
  }

  resume(): void {
    this.report.paused = false;
  }

  abort(reason?: string): void {
    this.aborted = true;
    this.report.abortReason = reason || 'aborted by an operator';
    this.cancelRunningParts();
  }

  /** A signal cannot be refused like an update: what it asked and why it was not done goes in the report's note. */
  ignored(what: string, why: string): void {
    this.report.note = `${what} signal ignored: ${why}`;
  }

  // ------------------------------------------------------------------ parts in flight

  track(key: string, scope: CancellationScope): void {
    this.running.set(key, scope);
  }

  untrack(key: string): void {
    this.running.delete(key);
  }

  cancelRunningParts(): void {
    this.running.forEach((scope) => scope.cancel());
  }

  // ------------------------------------------------------------------ passes

  /** A new pass over what the plan found: every legacy value is tried again, unreadable ones included. */
  startPass(plan: MigrationPlan): void {
    const { report } = this;
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
    // What is unreadable is what this pass finds.
    for (const field of report.fields) field.counters.unreadable = 0;
    report.totals.unreadable = 0;
    report.failures = [];
    const pass = `${this.carried.runKey}/pass-${report.passes}`;
    this.carried.pending = plan.groups
      ? plan.groups.flatMap((g) =>
          g.ranges.map((range, i) => ({
            field: g.fields[0]!,
            fields: g.fields,
            range,
            part: 0,
            slice: `${pass}/rows-${g.fields.join('-')}/slice-${i}`,
            countExisting: report.passes === 1,
          })),
        )
      : plan.fields.flatMap((f) =>
          f.ranges.map((range, i) => ({
            field: f.field,
            range,
            part: 0,
            slice: `${pass}/field-${f.field}/slice-${i}`,
            countExisting: report.passes === 1,
          })),
        );
  }

  /** Takes in what a part did; returns the part that goes on from its cursor if it did not finish its range. */
  took(part: MigrationPart, outcome: FieldSliceOutcome | RowSliceOutcome): MigrationPart | undefined {
    const { report } = this;
    // Fields are reported in the target's order: field i of the plan is field i of the report.
    const counted = Array.isArray(outcome.counters)
      ? outcome.counters.map((counters, i) => [part.fields![i]!, counters] as const)
      : [[part.field, outcome.counters] as const];
    for (const [index, counters] of counted) {
      const field = report.fields[index]!;
      field.counters = addFieldCounters(field.counters, counters);
      report.totals = addFieldCounters(report.totals, counters);
    }
    report.failures.push(...outcome.failures.slice(0, Math.max(0, MAX_FAILURES - report.failures.length)));
    return outcome.done ? undefined : { ...part, range: { ...part.range, after: outcome.cursor }, part: part.part + 1 };
  }

  finish(outcome: MigrationReport['outcome']): MigrationReport {
    this.report.phase = 'done';
    this.report.outcome = outcome;
    return this.report;
  }

  shouldContinueAsNew(): boolean {
    const info = workflowInfo();
    return info.continueAsNewSuggested || info.historyLength >= this.settings.maxHistoryEvents;
  }

  /** Continues as new once every update has been answered, carrying the report and the parts still to run. */
  async continueAsNew(): Promise<never> {
    await condition(allHandlersFinished);
    return continueAsNew<(request: MigrationRequest, carried?: MigrationCarried) => Promise<MigrationReport>>(
      this.request,
      this.carried,
    );
  }
}
