// Stub activities for fast tests of the rotation workflow's logic (phases, gates, pause, abort, counting): each
// activity answers from a small in-memory script, records that it ran, and can be held at its start until the test
// lets it go. The real activities are tested against PostgreSQL elsewhere; here only the workflow decides.
import { randomUUID } from 'node:crypto';
import { Context } from '@temporalio/activity';
import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import type { Activities } from '../../src/activities';
import type { SliceOutcome } from '../../src/activities/rewrap';
import { emptyCounters, type RewrapCounters } from '../../src/rewrap/counters';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import type { RunRecord } from '../../src/store/run-history';
import { rotateKek } from '../../src/workflows';
import { within, workflowBundle } from './temporal';

export { progressUntil } from './temporal';

interface Held {
  /** Resolves once the activity waits at its start; fails after 20 s of real time, saying which one never came. */
  entered(): Promise<void>;
  enter(): void;
  release(): void;
  released: Promise<void>;
}

function held(activity: string, calls: string[]): Held {
  let enter!: () => void;
  let release!: () => void;
  const arrived = new Promise<void>((resolve) => (enter = resolve));
  const released = new Promise<void>((resolve) => (release = resolve));
  const entered = () =>
    within(arrived, 20_000, () => `${activity} was never called; activities so far: ${calls.join(', ')}`);
  return { entered, enter, release, released };
}

export interface SliceScript {
  counters?: Partial<RewrapCounters>;
  failures?: { tenantId: string; reason: string }[];
  /** Runs instead of answering: e.g. wait for cancellation and fail. */
  run?: () => Promise<SliceOutcome>;
}

export class StubRotation {
  readonly taskQueue = `stub-${randomUUID()}`;
  readonly calls: string[] = [];
  /** What the fleet holds: every instance can unwrap with `to`, and wraps with it. */
  fleet = { unwrap: true, wrap: true };
  /** What planSlices answers as still labelled `from`, pass by pass (then 0). */
  stalePerPass: number[] = [10];
  /** How many slices planSlices cuts a pass into. */
  ranges = 1;
  /** What validateRotation throws instead of answering (its refusal). */
  validateRefusal?: Error;
  /** Who picks the current KEK: rekey's registry, or the application (whose steps then wait for evidence). */
  owner: 'registry' | 'application' = 'registry';
  /** For an application-owned target: the steps whose evidence the application shows (none: it waits for people). */
  evidence: { promote: boolean; retire: boolean } = { promote: false, retire: false };
  /** What each rewrapSlice call answers, in call order (then: nothing moved, done). */
  slices: SliceScript[] = [];
  /** Runs recorded in the run history (recordRun), in call order. */
  readonly recorded: RunRecord[] = [];
  /** Fails every recordRun with this (retryable) error: the history cannot be written. */
  recordFails: Error | undefined;
  private readonly holds = new Map<string, Held>();
  private readonly all: Held[] = [];

  /** The next call of `activity` waits at its start until `release()`; `entered` resolves once it is there. */
  hold(activity: string): Held {
    const h = held(activity, this.calls);
    this.holds.set(activity, h);
    this.all.push(h);
    return h;
  }

  private async enter(activity: string): Promise<void> {
    this.calls.push(activity);
    const h = this.holds.get(activity);
    if (!h) return;
    this.holds.delete(activity);
    h.enter();
    await h.released;
  }

  /** Lets every held activity go (so that a failing test's worker can shut down at once). */
  releaseAll(): void {
    for (const h of this.all) h.release();
  }

  /** Runs `body` with a worker for this stub; whatever happens, held activities are let go before it stops. */
  async run<T>(env: TestWorkflowEnvironment, body: () => Promise<T>): Promise<T> {
    const worker = await this.worker(env);
    return worker.runUntil(async () => {
      try {
        return await body();
      } finally {
        this.releaseAll();
      }
    });
  }

  count(activity: string): number {
    return this.calls.filter((c) => c === activity).length;
  }

  activities(): Partial<Activities> {
    let passes = 0;
    let sliceCalls = 0;
    return {
      validateRotation: async (request: RotationRequest) => {
        await this.enter('validateRotation');
        if (this.validateRefusal) throw this.validateRefusal;
        return {
          from: request.from === 'current' ? 'v1' : request.from,
          currentKekOwner: this.owner,
          since: new Date(0).toISOString(),
          noun: 'DEK',
          ...(this.owner === 'application' && {
            instructions: { promote: 'set CURRENT=v2 and restart', retire: 'remove KEK v1 and restart' },
          }),
        };
      },
      proposeKekId: async () => {
        await this.enter('proposeKekId');
        return 'v2';
      },
      provisionKek: async () => {
        await this.enter('provisionKek');
        return { fingerprint: 'kcv1:stub' };
      },
      fleetReadiness: async () => {
        await this.enter('fleetReadiness');
        const { unwrap, wrap } = this.fleet;
        return {
          live: 1,
          canUnwrap: unwrap ? 1 : 0,
          wrapsWith: wrap ? 1 : 0,
          cannotUnwrap: unwrap ? [] : ['app-1'],
          notWrapping: wrap ? [] : ['app-1'],
        };
      },
      promoteKek: async () => {
        await this.enter('promoteKek');
      },
      planSlices: async () => {
        await this.enter('planSlices');
        const stale = this.stalePerPass[passes++] ?? 0;
        const cuts = Array.from({ length: this.ranges - 1 }, (_, i) => `tenant-${i + 1}`);
        const bounds = ['', ...cuts];
        const ranges = bounds.map((after, i) => ({ after, until: bounds[i + 1] ?? null }));
        return { stale, ranges: stale > 0 ? ranges : [] };
      },
      rewrapSlice: async (args) => {
        await this.enter(args.scan === 'others' ? 'rewrapOthers' : 'rewrapSlice');
        if (args.scan === 'others') return outcome({});
        const script = this.slices[sliceCalls++] ?? {};
        if (script.run) return script.run();
        return outcome(script);
      },
      verifyRotation: async () => {
        await this.enter('verifyRotation');
        return { stale: 0, sampled: 10, unreadable: [] };
      },
      checkLabelled: async (args) => {
        await this.enter('checkLabelled');
        return { checked: 0, unreadable: 0, underFrom: 0, named: [], cursor: args.after, done: true };
      },
      proveLabels: async (args) => {
        await this.enter('proveLabels');
        return { tried: 0, relabelled: 0, needed: 0, neededRows: [], contended: 0, cursor: args.after, done: true };
      },
      retireKek: async () => {
        await this.enter('retireKek');
        return { retiredAt: new Date().toISOString() };
      },
      staleTenants: async () => {
        await this.enter('staleTenants');
        return [];
      },
      applicationEvidence: async ({ step }: { step: 'promote' | 'retire' }) => {
        await this.enter('applicationEvidence');
        if (this.owner === 'registry') return { satisfied: true, by: 'registry' as const, detail: 'registry' };
        return this.evidence[step]
          ? { satisfied: true, by: 'configuration' as const, detail: `the application did ${step}` }
          : { satisfied: false, detail: `no evidence that the application did ${step}` };
      },
      recordRun: async (run: RunRecord) => {
        await this.enter('recordRun');
        if (this.recordFails) throw this.recordFails;
        this.recorded.push(run);
        return { recorded: true };
      },
    };
  }

  worker(env: TestWorkflowEnvironment): Promise<Worker> {
    return Worker.create({
      connection: env.nativeConnection,
      taskQueue: this.taskQueue,
      workflowBundle: workflowBundle(),
      activities: this.activities(),
      // Cancellation reaches an activity with its next heartbeat: do not let the SDK hold heartbeats back for long.
      maxHeartbeatThrottleInterval: '200 milliseconds',
    });
  }

  start(
    env: TestWorkflowEnvironment,
    request: Partial<RotationRequest> = {},
  ): Promise<WorkflowHandleWithFirstExecutionRunId<typeof rotateKek>> {
    return env.client.workflow.start(rotateKek, {
      taskQueue: this.taskQueue,
      workflowId: `stub-rotation-${randomUUID()}`,
      args: [{ from: 'v1', to: 'v2', gracePeriod: '1h', ...request }],
    });
  }
}

export function outcome(script: SliceScript): SliceOutcome {
  return {
    counters: { ...emptyCounters(), ...script.counters },
    cursor: '',
    done: true,
    failures: script.failures ?? [],
    contendedTenants: [],
  };
}

/** A slice that heartbeats until the workflow cancels it, then fails the way `fail` says (or as cancelled). */
export function sliceUntilCancelled(
  onCancel: () => Error | undefined,
  onStart?: () => void,
): () => Promise<SliceOutcome> {
  return async () => {
    const context = Context.current();
    onStart?.();
    for (;;) {
      context.heartbeat();
      if (context.cancellationSignal.aborted) {
        const error = onCancel();
        if (error) throw error;
        throw context.cancellationSignal.reason as Error;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
}
