// The history of a keyspace's rotations and migrations, for `rekey history` and the admin API: newest first, each
// with from → to, start, end, the one status it ended in (src/rotation/run-status.ts) and its counts, as
// `aws kms list-key-rotations` lists a key's rotations.
//
// Two sources, merged: rekey.run_history, which every run writes as its last step and which lives as long as the
// keyspace's database; and Temporal's visibility, for what that table cannot hold: runs still going, runs Temporal
// ended itself (terminated, timed out) and runs of builds that did not record their end, as long as the namespace's
// retention keeps them. A server without visibility (the time-skipping test server) leaves the table alone.
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { Pool } from 'pg';
import {
  labelOf,
  migrationRunStatus,
  retryingSteps,
  rotationRunStatus,
  type RunState,
  type RunStatus,
} from '../rotation/run-status';
import { parseKeyspaceId, runIdsOf, type Keyspace } from '../rotation/identity';
import { RunHistory, type RunRecord } from '../store/run-history';
import type { MigrationReport, RotationReport } from '../workflows';
import { migrationProgressQuery, progressQuery } from '../workflows/messages';
import { RekeyFromKek, RekeyTarget, RekeyToKek } from '../workflows/search-attributes';
import { failureMessage, opIdOf } from './rotations';

export interface HistoryEntry {
  /** `<workflow id>@<first run id>`: what `rekey status` and `rotation-status` take. */
  opId: string;
  kind: 'rotation' | 'migration';
  target: string;
  from?: string;
  to?: string;
  startedAt: string;
  /** Absent while it runs. */
  endedAt?: string;
  state: RunState;
  label: string;
  reason: string;
  rows: { total: number; moved: number; unreadable: number };
  /** Where this entry was read: rekey's run history, or Temporal (a run not recorded there). */
  source: 'rekey' | 'temporal';
  /**
   * Set for a run a build before keyspaces started (`kek-rotation-<target>`, an id that names no database) that neither
   * this database's run history nor the run's own input ties to a database: it may be another database's run of a
   * target of the same name. Says so, in words.
   */
  databaseUnknown?: string;
}

export interface History {
  target: string;
  runs: HistoryEntry[];
  /** Set when Temporal could not be asked: running runs, and runs it ended itself, are then missing. */
  temporalUnavailable?: string;
}

function fromRecord(record: RunRecord): HistoryEntry {
  return {
    opId: opIdOf(record.workflowId, record.runId),
    kind: record.kind,
    target: record.target,
    ...(record.from !== undefined && { from: record.from }),
    ...(record.to !== undefined && { to: record.to }),
    startedAt: new Date(record.startedAt).toISOString(),
    endedAt: new Date(record.endedAt).toISOString(),
    state: record.state,
    label: labelOf(record.state),
    reason: record.reason,
    rows: { total: record.rowsTotal, moved: record.rowsMoved, unreadable: record.rowsUnreadable },
    source: 'rekey',
  };
}

function entryOf(
  execution: WorkflowExecutionInfo,
  kind: HistoryEntry['kind'],
  target: string,
  status: RunStatus,
  details: { from?: string; to?: string; startedAt?: number; unreadable: number },
): HistoryEntry {
  const firstRunId = execution.raw.firstRunId || execution.runId;
  return {
    opId: opIdOf(execution.workflowId, firstRunId),
    kind,
    target,
    ...(details.from !== undefined && { from: details.from }),
    ...(details.to !== undefined && { to: details.to }),
    startedAt: new Date(details.startedAt ?? execution.startTime.getTime()).toISOString(),
    ...(execution.closeTime && { endedAt: execution.closeTime.toISOString() }),
    state: status.state,
    label: status.label,
    reason: status.reason,
    rows: { ...status.rows, unreadable: details.unreadable },
    source: 'temporal',
  };
}

/** A rotation Temporal lists, in the one status. */
async function rotationEntry(client: Client, execution: WorkflowExecutionInfo, target: string): Promise<HistoryEntry> {
  const handle = client.workflow.getHandle(execution.workflowId, execution.runId);
  const status = execution.status.name;
  let progress: RotationReport | undefined;
  let failure: string | undefined;
  let retrying;
  if (status === 'RUNNING') {
    progress = await handle.query(progressQuery).catch(() => undefined);
    retrying = retryingSteps((await handle.describe().catch(() => undefined))?.raw.pendingActivities);
  } else {
    await handle.result().then(
      (report: RotationReport) => (progress = report),
      (err: unknown) => (failure = failureMessage(err)),
    );
  }
  const run = rotationRunStatus({ execution: status, progress, failure, retrying }, Date.now());
  return entryOf(execution, 'rotation', target, run, {
    from: progress?.from ?? execution.typedSearchAttributes.get(RekeyFromKek),
    to: progress?.to ?? execution.typedSearchAttributes.get(RekeyToKek),
    startedAt: progress?.phases.validate?.startedAt,
    unreadable: progress?.counters.failed ?? 0,
  });
}

/** A migration Temporal lists, in the one status. */
async function migrationEntry(client: Client, execution: WorkflowExecutionInfo, target: string): Promise<HistoryEntry> {
  const handle = client.workflow.getHandle(execution.workflowId, execution.runId);
  const status = execution.status.name;
  let report: MigrationReport | undefined;
  let failure: string | undefined;
  let retrying;
  if (status === 'RUNNING') {
    report = await handle.query(migrationProgressQuery).catch(() => undefined);
    retrying = retryingSteps((await handle.describe().catch(() => undefined))?.raw.pendingActivities);
  } else {
    await handle.result().then(
      (ended: MigrationReport) => (report = ended),
      (err: unknown) => (failure = failureMessage(err)),
    );
  }
  const run = migrationRunStatus({ execution: status, report, failure, retrying }, Date.now());
  return entryOf(execution, 'migration', target, run, {
    ...(report?.kekId !== undefined && { to: report.kekId }),
    startedAt: report?.startedAt,
    unreadable: report?.totals.unreadable ?? 0,
  });
}

const quoted = (value: string) => `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

/**
 * The keyspace's runs of a kind, by workflow id (src/rotation/identity.ts): theirs and their dry runs', and those an
 * older build started under the target's old id (which names no database: listed in every keyspace of that target).
 */
function idsOf(kind: 'rotation' | 'migration', target: string, keyspace: Keyspace): string {
  const { id, dryRunPrefix, legacyId } = runIdsOf(kind, target, keyspace);
  return (
    `(WorkflowId = ${quoted(id)} OR WorkflowId STARTS_WITH ${quoted(dryRunPrefix)}` +
    ` OR WorkflowId = ${quoted(legacyId)} OR WorkflowId STARTS_WITH ${quoted(`${legacyId}-dry-run-`)})`
  );
}

/**
 * Which database a run of a build before keyspaces ran against, as its own input says: the keyspace its request or the
 * state carried into its run names (a run of such a build taken up by a later worker carries it once validated).
 * Undefined when its input names none, or cannot be read.
 */
async function databaseInInput(client: Client, execution: WorkflowExecutionInfo): Promise<string | undefined> {
  try {
    const history = await client.workflow.getHandle(execution.workflowId, execution.runId).fetchHistory();
    const payloads = history.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads ?? [];
    for (const payload of payloads) {
      const value = defaultPayloadConverter.fromPayload<{ keyspace?: unknown } | null>(payload);
      const keyspace = typeof value?.keyspace === 'string' ? parseKeyspaceId(value.keyspace) : undefined;
      if (keyspace) return keyspace.databaseId;
    }
  } catch {
    // Not readable (another converter, a history gone): the database stays unknown.
  }
  return undefined;
}

/** A keyspace's rotations and migrations, newest first: at most `limit`. */
export async function runHistory(options: {
  db: Pool;
  client: () => Promise<Client>;
  target: string;
  /** The target's keyspace: Temporal is asked for its runs alone (another database's target of the same name has its own). */
  keyspace: Keyspace;
  limit: number;
}): Promise<History> {
  const { target, keyspace, limit } = options;
  const legacyIds = new Set([
    runIdsOf('rotation', target, keyspace).legacyId,
    runIdsOf('migration', target, keyspace).legacyId,
  ]);
  const isLegacy = (workflowId: string) =>
    legacyIds.has(workflowId) || [...legacyIds].some((id) => workflowId.startsWith(`${id}-dry-run-`));
  const recorded = (await new RunHistory(options.db).list(target, limit)).map(fromRecord);
  const known = new Set(recorded.map((entry) => entry.opId));
  // A run recorded in the table is that run, however Temporal chains it: its workflow id and time span say so.
  const covered = (execution: WorkflowExecutionInfo) =>
    known.has(opIdOf(execution.workflowId, execution.raw.firstRunId || execution.runId)) ||
    recorded.some(
      (entry) =>
        entry.opId.startsWith(`${execution.workflowId}@`) &&
        Date.parse(entry.startedAt) <= execution.startTime.getTime() &&
        execution.startTime.getTime() <= Date.parse(entry.endedAt!),
    );
  const fromTemporal: HistoryEntry[] = [];
  let temporalUnavailable: string | undefined;
  try {
    const client = await options.client();
    const lists = [
      {
        kind: 'rotation' as const,
        query: `WorkflowType = 'rotateKek' AND ${RekeyTarget.name} = ${quoted(target)} AND ${idsOf('rotation', target, keyspace)}`,
        entry: rotationEntry,
      },
      {
        kind: 'migration' as const,
        query: `WorkflowType = 'migrateDek' AND ${idsOf('migration', target, keyspace)}`,
        entry: migrationEntry,
      },
    ];
    for (const list of lists) {
      let seen = 0;
      for await (const execution of client.workflow.list({ query: list.query })) {
        // A run that continued as new goes on in a later execution of the same chain: that one stands for it.
        if (execution.status.name === 'CONTINUED_AS_NEW' || covered(execution)) continue;
        let databaseUnknown: string | undefined;
        if (isLegacy(execution.workflowId)) {
          // Its id names no database: it is this keyspace's only if its own record says so. Another database's run is
          // left to that database's history; one whose database nothing records is listed, saying so.
          const database = await databaseInInput(client, execution);
          if (database !== undefined && database !== keyspace.databaseId) continue;
          if (database === undefined) {
            databaseUnknown = `started before keyspaces under ${execution.workflowId}, an id that names no database; neither this database's run history nor the run's input says which database it rotated: it may be another database's target '${target}'`;
          }
        }
        const entry = await list.entry(client, execution, target);
        fromTemporal.push(databaseUnknown === undefined ? entry : { ...entry, databaseUnknown });
        if (++seen >= limit) break;
      }
    }
  } catch (err) {
    temporalUnavailable = (err as Error).message;
  }
  const runs = [...recorded, ...fromTemporal]
    .sort((a, b) => Date.parse(b.startedAt) - Date.parse(a.startedAt))
    .slice(0, limit);
  return { target, runs, ...(temporalUnavailable !== undefined && { temporalUnavailable }) };
}
