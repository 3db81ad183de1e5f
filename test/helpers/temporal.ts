import { spawn } from 'node:child_process';
import { once } from 'node:events';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterEach, beforeEach, inject } from 'vitest';
import { ensureSearchAttributes } from '../../src/client/search-attributes';
import { startDevServer } from '../../src/dev/dev-server';
import { listeningPorts } from '../../src/dev/ports';
import { eventually, within } from './eventually';
import type { ProgressReport } from '../../src/rotation/progress';
import { progressQuery } from '../../src/workflows';

export { within };

/**
 * A Temporal server this file started, and the SDK's test environment over it. The SDK's own `createTimeSkipping` and
 * `createLocal` choose a port, close it and hand its number to the server, which another process can take in between;
 * these start the servers themselves, on ports that cannot be taken first (see `startDevServer`, `startTestServer`).
 * `teardown` also stops the server.
 */
export class OwnServerEnvironment extends TestWorkflowEnvironment {
  stopServer: () => Promise<void> = () => Promise.resolve();
  /** The dev server's Web UI, when started with one. */
  uiUrl?: string;

  override async teardown(): Promise<void> {
    await super.teardown();
    await this.stopServer();
  }
}

/**
 * The SDK's constructor of an environment over a running server, with time skipping on or off. Its public
 * `createFromExistingServer` always turns time skipping off (no TimeSkippingClient, a real-time `sleep`), so the
 * time-skipping server is wrapped through the method behind it (@temporalio/testing 1.24's `create`).
 */
function environmentOver(address: string, supportsTimeSkipping: boolean): Promise<OwnServerEnvironment> {
  const sdk = OwnServerEnvironment as unknown as {
    create(options: {
      server: { type: 'existing' };
      address: string;
      namespace: string;
      supportsTimeSkipping: boolean;
    }): Promise<OwnServerEnvironment>;
  };
  return sdk.create({ server: { type: 'existing' }, address, namespace: 'default', supportsTimeSkipping });
}

/**
 * The Java time-skipping test server (as the setup built it) on port 0: the JVM listens on a port the kernel gives it,
 * read from its own listening socket (it prints nothing). A server that exits while starting fails at once with its
 * output; one that does not listen within `withinMs` (a JVM on a loaded machine is slow, not stuck) fails with that.
 */
export async function startTestServer(withinMs = 60_000): Promise<{ address: string; stop: () => Promise<void> }> {
  // As the SDK starts it, but on port 0 (and without --enable-time-skipping: its client skips time while a test waits).
  const child = spawn(inject('toolchain').testServer, ['0'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let output = '';
  child.stderr.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000)));
  const exited = once(child, 'exit');
  // The SDK stops it the same way: nothing of a test server's state outlives it.
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited;
  };
  try {
    const port = await eventually(
      'the time-skipping test server listening',
      () => {
        const ports = listeningPorts(child.pid!);
        if (ports.length > 1) throw new Error(`the time-skipping test server listens on ${ports.join(', ')}: which?`);
        return ports[0];
      },
      {
        within: withinMs,
        every: 25,
        failIf: () =>
          child.exitCode !== null || child.signalCode !== null
            ? `the time-skipping test server exited while starting: ${output.trim().slice(-500) || 'no output'}`
            : undefined,
      },
    );
    return { address: `127.0.0.1:${port}`, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The Java time-skipping test server built by the setup (no download), with rekey's search attributes. */
export async function createTimeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  const server = await startTestServer();
  try {
    const env = await environmentOver(server.address, true);
    env.stopServer = () => server.stop();
    await ensureSearchAttributes(env.connection, env.namespace ?? 'default');
    return env;
  } catch (err) {
    await server.stop();
    throw err;
  }
}

/**
 * A fresh time-skipping server for every test of the calling file (it starts in well under a second). The test
 * server has open bugs that leave its time-skipping lock held after a rejected workflow task or a run that ends with
 * activities outstanding (temporalio/sdk-java#2391, #1138): one test would then leave every later test of the file
 * running in real time. Tests that cancel running activities (pause, abort mid-rewrap) use the dev server instead.
 */
export function useTimeSkippingEnv(): { readonly env: TestWorkflowEnvironment } {
  let current: TestWorkflowEnvironment | undefined;
  beforeEach(async () => {
    current = await createTimeSkippingEnv();
  });
  afterEach(async () => {
    await current?.teardown();
    current = undefined;
  });
  return {
    get env() {
      if (!current) throw new Error('the time-skipping server is only available inside tests');
      return current;
    },
  };
}

/**
 * The go-built `temporal server start-dev` (in-memory unless dbFilename is given), with rekey's search attributes; with
 * `ui`, its Web UI too (at `uiUrl`). Its ports are chosen as `startDevServer` says: tried, and tried again on others
 * when the server finds one taken.
 */
export async function createDevServerEnv(
  options: { ui?: boolean; dbFilename?: string } = {},
): Promise<OwnServerEnvironment> {
  const server = await startDevServer({
    temporalCli: inject('toolchain').temporalCli,
    ...(options.ui && { uiPort: 0 }),
    ...(options.dbFilename && { dbFilename: options.dbFilename }),
  });
  try {
    const env = await environmentOver(server.address, false);
    env.stopServer = () => server.stop();
    env.uiUrl = server.uiUrl;
    return env;
  } catch (err) {
    await server.stop();
    throw err;
  }
}

export function workflowBundle(): { code: string } {
  return { code: inject('workflowCode') };
}

/**
 * A workflow's result, or, after `withinMs` of real time, a failure that says where the run is stuck: its status,
 * its pending activities with their attempts and last failures, and its last events. Well inside the test timeout,
 * so that a stuck test fails with its reason instead of a bare timeout.
 */
export async function resultWithin<T>(handle: WorkflowHandle, withinMs = 60_000): Promise<T> {
  return within(handle.result() as Promise<T>, withinMs, () =>
    describeStuck(handle).then(
      (why) => `workflow ${handle.workflowId} did not finish within ${withinMs} ms: ${why}`,
      (err: unknown) => `workflow ${handle.workflowId} did not finish; describe failed: ${String(err)}`,
    ),
  );
}

async function describeStuck(handle: WorkflowHandle): Promise<string> {
  const description = await handle.describe();
  const pending = (description.raw.pendingActivities ?? []).map(
    (a) =>
      `${a.activityType?.name} attempt ${a.attempt} (${a.state})${a.lastFailure?.message ? `: ${a.lastFailure.message}` : ''}`,
  );
  const history = await handle.fetchHistory();
  const last = (history.events ?? []).slice(-5).map((e) => String(e.eventType).replace('EVENT_TYPE_', ''));
  return `status ${description.status.name}; pending activities: ${pending.join('; ') || 'none'}; last events: ${last.join(', ')}`;
}

/**
 * Polls the progress (of a rotation, or of a migration with R = MigrationReport) until `predicate` holds: `queryUntil`
 * on the 'progress' query, which both workflows answer.
 */
export function progressUntil<R = ProgressReport>(
  handle: WorkflowHandle,
  predicate: (p: R) => boolean,
  options: { env?: TestWorkflowEnvironment; skip?: string; withinMs?: number } = {},
): Promise<R> {
  return queryUntil<R>(handle, progressQuery.name, predicate, options);
}

/** How long one poll of queryUntil waits for its answer before it asks again (see there). */
const QUERY_RETRY_MS = 5_000;
const UNANSWERED = 'no answer yet';

/**
 * Polls a workflow's query until `predicate` holds on its answer. On the time-skipping server, `skip` moves workflow
 * time on between polls (timers fire: gates poll again, grace runs); without it, polls are 25 ms of real time apart.
 * Bounded in real time (`withinMs`, 45 s), each call included: a poll or a time skip that hangs (a busy machine, a
 * server that stopped answering) fails the test at once with the last answer seen, instead of holding it until the
 * test's timeout. What a workflow shows after an activity's side effect is seen (a webhook received, a row written)
 * waits for the activity's completion to reach the workflow: poll for it, never query once. One polling mechanism:
 * `eventually`'s, with a query that goes unanswered for a few seconds cancelled and asked again.
 */
export async function queryUntil<R>(
  handle: WorkflowHandle,
  queryName: string,
  predicate: (answer: R) => boolean,
  options: { env?: TestWorkflowEnvironment; skip?: string; withinMs?: number } = {},
): Promise<R> {
  let last: R | undefined;
  // The query in flight, cancelled when it is abandoned: so that its retries do not outlive the test's connection.
  let asking: AbortController | undefined;
  const poll = async (): Promise<{ value: R } | undefined> => {
    // A query that reaches a run as it continues as new is never answered by the time-skipping server (the run it was
    // sent to has closed): after a few seconds the poll asks again, and the next query reaches the run that goes on.
    asking = new AbortController();
    const abandon = asking;
    const answer = await within(
      handle.client.withAbortSignal(abandon.signal, () => handle.query<R>(queryName)),
      QUERY_RETRY_MS,
      () => UNANSWERED,
    ).then(
      (value) => ({ value }),
      (err: unknown) => {
        abandon.abort();
        if (err instanceof Error && err.message === UNANSWERED) return undefined;
        throw err;
      },
    );
    if (answer === undefined) return undefined;
    last = answer.value;
    if (predicate(answer.value)) return answer;
    // Not yet: on the time-skipping server, workflow time moves on before the next poll (bounded like the poll).
    if (options.env && options.skip) await options.env.sleep(options.skip);
    return undefined;
  };
  try {
    const { value } = await eventually(`an answer to '${queryName}' that matches`, poll, {
      within: options.withinMs ?? 45_000,
      every: options.env && options.skip ? 0 : 25,
      describe: () => `last answer to '${queryName}': ${JSON.stringify(last)}`,
    });
    return value;
  } catch (err) {
    asking?.abort();
    throw err;
  }
}

/**
 * Waits until the run has no activity pending (running, retrying or being cancelled), as the server sees it: after a
 * pause, the slices have stopped and their last batches have committed. Bounded in real time; a run that keeps one
 * fails the test with its description.
 */
export async function untilNoActivityPending(handle: WorkflowHandle, withinMs = 45_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (Date.now() < deadline) {
    const description = await within(handle.describe(), Math.max(1, deadline - Date.now()), () =>
      describeStuck(handle).then((why) => `describe did not answer in time: ${why}`),
    );
    if ((description.raw.pendingActivities ?? []).length === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`activities were still pending after ${withinMs} ms: ${await describeStuck(handle)}`);
}

/** Moves the time-skipping server's clock on by `duration`, failing after `withinMs` of real time if it does not. */
export function skipTime(env: TestWorkflowEnvironment, duration: string, withinMs = 30_000): Promise<void> {
  return within(env.sleep(duration), withinMs, () => `a time skip of ${duration} did not end within ${withinMs} ms`);
}

/** The history length of each run of a workflow's chain of continue-as-new, latest first. */
export async function chainLengths(client: Client, workflowId: string): Promise<number[]> {
  const lengths: number[] = [];
  let runId: string | undefined;
  do {
    const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    lengths.push(history.events?.length ?? 0);
    runId = history.events?.[0]?.workflowExecutionStartedEventAttributes?.continuedExecutionRunId || undefined;
  } while (runId !== undefined);
  return lengths;
}

/** The history bound (maxHistoryEvents) the history-bound tests give a run: small, so that waits continue as new. */
export const TEST_HISTORY_BOUND = 60;
/**
 * What a run may hold past the bound: the workflow task that sees it (its completion, the continue-as-new) and the
 * messages that arrive before that task completes (each sends the task round again): on a loaded machine a slow task
 * meets more of them (92 seen under the whole suite). Without the bound, every message adds four or five events: the
 * run that waits for the retire confirmation in test/workflows/history-bound.test.ts held 199 to 256.
 */
export const HISTORY_OVERSHOOT = 50;
