import { KEK_STATES } from '../envelope/kek-lifecycle';
// Gauges read at scrape time from Temporal and the registries: what the shipped Grafana dashboard draws and the
// Prometheus alert rules watch (ops/grafana/rekey.json, ops/prometheus/rekey-alerts.yml). One snapshot serves every
// gauge of a scrape.
import type { Client, WorkflowHandle } from '@temporalio/client';
import { Gauge, type Registry } from 'prom-client';
import { rotationSchedules } from '../client/schedules';
import type { TargetRuntimes } from '../targets/runtime';
import {
  ENDED_STATES,
  migrationRunStatus,
  retryingSteps,
  rotationRunStatus,
  RUN_STATES,
  type RetryingStep,
  type RunStatus,
} from '../rotation/run-status';
import type { RotationReport } from '../workflows';
import { migrationProgressQuery, noticeStateQuery, progressQuery, type NoticeState } from '../workflows/messages';

interface Snapshot {
  rotations: { workflowId: string; report: RotationReport }[];
  /** The one status (src/rotation/run-status.ts) of each running rotation and migration. */
  runs: { kind: 'rotation' | 'migration'; workflowId: string; target: string; status: RunStatus }[];
  keks: { target: string; kekId: string; state: string }[];
  schedules: {
    scheduleId: string;
    paused: boolean;
    nextRun?: Date;
    lastRun?: Date;
    /** Whether the launcher the last run started has ended well (it starts the rotation and ends at once). */
    lastRunCompleted?: boolean;
  }[];
  notices: NoticeState[];
}

const SNAPSHOT_TTL_MS = 1_000;

/** The names of every gauge below, for the test that checks the dashboard and rules name only metrics that exist. */
export const ROTATION_GAUGES = [
  'rekey_run_status',
  'rekey_rotation_progress_ratio',
  'rekey_rotation_phase_seconds',
  'rekey_rotation_waiting_seconds',
  'rekey_rotation_paused',
  'rekey_rotation_grace_end_timestamp_seconds',
  'rekey_kek_state',
  'rekey_schedule_paused',
  'rekey_schedule_next_run_timestamp_seconds',
  'rekey_schedule_last_run_timestamp_seconds',
  'rekey_schedule_last_run_completed',
  'rekey_schedule_next_notice_timestamp_seconds',
  'rekey_rotation_upcoming',
  'rekey_notice_failing_since_timestamp_seconds',
] as const;

export function registerRotationGauges(registry: Registry, targets: TargetRuntimes, client: Client): void {
  let cached: { at: number; snapshot: Promise<Snapshot> } | undefined;
  const snapshot = (): Promise<Snapshot> => {
    const now = Date.now();
    if (!cached || now - cached.at > SNAPSHOT_TTL_MS) cached = { at: now, snapshot: take(targets, client) };
    return cached.snapshot;
  };
  const gauge = (name: (typeof ROTATION_GAUGES)[number], help: string, labelNames: string[], fill: Fill) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      async collect() {
        this.reset();
        fill(await snapshot(), (labels, value) => this.set(labels, value), Date.now());
      },
    });

  gauge(
    'rekey_run_status',
    'The status of each running rotation and migration, in the words of rekey status (1 = in this status): running, waiting, paused, or retrying (a step keeps failing)',
    ['kind', 'workflow_id', 'target', 'status'],
    (s, set) => {
      for (const run of s.runs) {
        for (const status of LIVE_STATES) {
          set(
            { kind: run.kind, workflow_id: run.workflowId, target: run.target, status },
            run.status.state === status ? 1 : 0,
          );
        }
      }
    },
  );
  gauge('rekey_rotation_progress_ratio', 'Share of the rewrap done, 0 to 1', ['workflow_id', 'target'], (s, set) => {
    for (const { workflowId, report } of s.rotations) {
      set({ workflow_id: workflowId, target: report.target ?? 'rekey' }, report.percent / 100);
    }
  });
  gauge(
    'rekey_rotation_phase_seconds',
    'Seconds the rotation has been in its current phase',
    ['workflow_id', 'target', 'phase'],
    (s, set, now) => {
      for (const { workflowId, report } of s.rotations) {
        const started = report.phases[report.phase]?.startedAt ?? report.at;
        set({ workflow_id: workflowId, target: report.target ?? 'rekey', phase: report.phase }, (now - started) / 1000);
      }
    },
  );
  gauge(
    'rekey_rotation_waiting_seconds',
    'Seconds the rotation has waited for the fleet or the application (absent when it waits for nothing)',
    ['workflow_id', 'target', 'kind', 'step'],
    (s, set, now) => {
      for (const { workflowId, report } of s.rotations) {
        if (!report.waiting) continue;
        const labels = { workflow_id: workflowId, target: report.target ?? 'rekey' };
        set({ ...labels, kind: report.waiting.kind, step: report.waiting.step }, (now - report.waiting.since) / 1000);
      }
    },
  );
  gauge('rekey_rotation_paused', '1 while an operator has paused the rotation', ['workflow_id', 'target'], (s, set) => {
    for (const { workflowId, report } of s.rotations) {
      set({ workflow_id: workflowId, target: report.target ?? 'rekey' }, report.paused ? 1 : 0);
    }
  });
  gauge(
    'rekey_rotation_grace_end_timestamp_seconds',
    'When the grace period ends (Unix seconds), once it has begun',
    ['workflow_id', 'target'],
    (s, set) => {
      for (const { workflowId, report } of s.rotations) {
        if (report.graceEndsAt === undefined) continue;
        set({ workflow_id: workflowId, target: report.target ?? 'rekey' }, report.graceEndsAt / 1000);
      }
    },
  );
  gauge(
    'rekey_kek_state',
    "Each KEK's state in the registry (1 = in this state)",
    ['target', 'kek_id', 'state'],
    (s, set) => {
      for (const kek of s.keks) {
        for (const state of KEK_STATES)
          set({ target: kek.target, kek_id: kek.kekId, state }, kek.state === state ? 1 : 0);
      }
    },
  );
  gauge('rekey_schedule_paused', '1 while a rotation schedule is paused', ['schedule_id'], (s, set) => {
    for (const schedule of s.schedules) set({ schedule_id: schedule.scheduleId }, schedule.paused ? 1 : 0);
  });
  gauge(
    'rekey_schedule_next_run_timestamp_seconds',
    'When a rotation schedule runs next (Unix seconds)',
    ['schedule_id'],
    (s, set) => {
      for (const schedule of s.schedules) {
        if (schedule.nextRun) set({ schedule_id: schedule.scheduleId }, schedule.nextRun.getTime() / 1000);
      }
    },
  );
  gauge(
    'rekey_schedule_last_run_timestamp_seconds',
    'When a rotation schedule last ran (Unix seconds)',
    ['schedule_id'],
    (s, set) => {
      for (const schedule of s.schedules) {
        if (schedule.lastRun) set({ schedule_id: schedule.scheduleId }, schedule.lastRun.getTime() / 1000);
      }
    },
  );
  gauge(
    'rekey_schedule_last_run_completed',
    "1 if the schedule's last run has done its work (started the rotation, or found one running), 0 if not yet",
    ['schedule_id'],
    (s, set) => {
      for (const schedule of s.schedules) {
        if (schedule.lastRunCompleted !== undefined) {
          set({ schedule_id: schedule.scheduleId }, schedule.lastRunCompleted ? 1 : 0);
        }
      }
    },
  );
  gauge(
    'rekey_schedule_next_notice_timestamp_seconds',
    'When the next notice of a scheduled rotation goes out (Unix seconds), for schedules that give notice',
    ['schedule_id', 'target'],
    (s, set) => {
      for (const notice of s.notices) {
        if (notice.nextNotice === undefined || notice.noticedFor === notice.nextRotation) continue;
        set({ schedule_id: notice.scheduleId, target: notice.target }, Date.parse(notice.nextNotice) / 1000);
      }
    },
  );
  gauge(
    'rekey_rotation_upcoming',
    '1 from the notice of a scheduled rotation until it starts',
    ['schedule_id', 'target', 'rotation_at'],
    (s, set, now) => {
      for (const notice of s.notices) {
        const announced = notice.noticedFor;
        if (announced === undefined || Date.parse(announced) <= now) continue;
        set({ schedule_id: notice.scheduleId, target: notice.target, rotation_at: announced }, 1);
      }
    },
  );
  gauge(
    'rekey_notice_failing_since_timestamp_seconds',
    'Since when the notice of a scheduled rotation has been refused by its receiver (Unix seconds); absent once it went out',
    ['schedule_id', 'target'],
    (s, set) => {
      for (const notice of s.notices) {
        if (notice.failing === undefined) continue;
        set({ schedule_id: notice.scheduleId, target: notice.target }, Date.parse(notice.failing.since) / 1000);
      }
    },
  );
}

type Fill = (snapshot: Snapshot, set: (labels: Record<string, string>, value: number) => void, now: number) => void;

/** The states a running run can be in: each gets its series, 1 for the one it is in. */
const LIVE_STATES = RUN_STATES.filter((state) => !ENDED_STATES.includes(state));

async function take(targets: TargetRuntimes, client: Client): Promise<Snapshot> {
  const rotations: Snapshot['rotations'] = [];
  const runs: Snapshot['runs'] = [];
  const now = Date.now();
  const query = `WorkflowType = 'rotateKek' AND ExecutionStatus = 'Running'`;
  for await (const execution of client.workflow.list({ query })) {
    const handle = client.workflow.getHandle(execution.workflowId, execution.runId);
    // A run that cannot answer now (no worker yet) is left out of this scrape, not an error for the others.
    const report = await handle.query(progressQuery).catch(() => undefined);
    if (!report) continue;
    rotations.push({ workflowId: execution.workflowId, report });
    const retrying = await retryingNow(handle);
    runs.push({
      kind: 'rotation',
      workflowId: execution.workflowId,
      target: report.target ?? 'rekey',
      status: rotationRunStatus({ execution: 'RUNNING', progress: report, retrying }, now),
    });
  }
  for await (const execution of client.workflow.list({
    query: `WorkflowType = 'migrateDek' AND ExecutionStatus = 'Running'`,
  })) {
    const handle = client.workflow.getHandle(execution.workflowId, execution.runId);
    const report = await handle.query(migrationProgressQuery).catch(() => undefined);
    if (!report) continue;
    const retrying = await retryingNow(handle);
    runs.push({
      kind: 'migration',
      workflowId: execution.workflowId,
      target: report.target,
      status: migrationRunStatus({ execution: 'RUNNING', report, retrying }, now),
    });
  }
  const keks: Snapshot['keks'] = [];
  for (const runtime of await targets.openedRuntimes()) {
    for (const kek of await runtime.registry.list()) {
      keks.push({ target: runtime.definition.name, kekId: kek.kekId, state: kek.state });
    }
  }
  const schedules: Snapshot['schedules'] = [];
  for await (const listed of rotationSchedules(client)) {
    const last = listed.info.recentActions.at(-1);
    let lastRunCompleted: boolean | undefined;
    if (last?.action.type === 'startWorkflow') {
      const { workflowId, firstExecutionRunId } = last.action.workflow;
      const description = await client.workflow
        .getHandle(workflowId, firstExecutionRunId)
        .describe()
        .catch(() => undefined);
      lastRunCompleted = description?.status.name === 'COMPLETED';
    }
    schedules.push({
      scheduleId: listed.scheduleId,
      paused: listed.state.paused,
      ...(listed.info.nextActionTimes[0] && { nextRun: listed.info.nextActionTimes[0] }),
      ...(last && { lastRun: last.takenAt }),
      ...(lastRunCompleted !== undefined && { lastRunCompleted }),
    });
  }
  const notices: NoticeState[] = [];
  for await (const execution of client.workflow.list({
    query: `WorkflowType = 'scheduleNotices' AND ExecutionStatus = 'Running'`,
  })) {
    const state = await client.workflow
      .getHandle(execution.workflowId, execution.runId)
      .query(noticeStateQuery)
      .catch(() => undefined);
    if (state) notices.push(state);
  }
  return { rotations, runs, keks, schedules, notices };
}

/** The steps of a running workflow that Temporal is retrying (none if it cannot be described now). */
async function retryingNow(handle: WorkflowHandle): Promise<RetryingStep[]> {
  const description = await handle.describe().catch(() => undefined);
  return retryingSteps(description?.raw.pendingActivities);
}
