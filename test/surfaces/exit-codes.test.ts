// The table of what the caller gets (docs/10-exit-codes-and-statuses.md), case by case, run row by row: each row's CLI line against the built
// CLI and its HTTP request against the admin API, as written, and their answers against the row's exit code and
// status. A row with no test here fails, and so does a test with no row: the table cannot drift from what rekey does.
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAdminServer } from '../../src/admin/server';
import { findRotation, startRotation, type KeyspaceLookup } from '../../src/client/rotations';
import { keyspaceOf as keyspaceNamed, migrationWorkflowIdOf, rotationWorkflowId } from '../../src/rotation/identity';
import { seedTenants } from '../../src/dev/tenants';
import { kekFingerprint } from '../../src/envelope/dek-wrapping';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { parseTargetsConfig } from '../../src/targets/config';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createWorker } from '../../src/worker';
import { abortUpdate, migrateDek, pauseSignal, type RotationReport } from '../../src/workflows';
import { CLIENT_ERROR_ANSWERS, EXIT_CODES, HTTP_STATUSES, RunFailedError, type ErrorKind } from '../../src/errors';
import { runRekey, type CliResult } from '../helpers/cli';
import { createApplicationDatabase, createTestDatabase, type TestDatabase } from '../helpers/database';
import { createMyceliumSchema, kekOf, seedLegacyInventory, seedMyceliumTenants } from '../helpers/mycelium';
import { createTalosSchema, seedSecrets } from '../helpers/talos';
import { docTable } from '../helpers/readme';
import { createDevServerEnv, progressUntil, resultWithin, workflowBundle } from '../helpers/temporal';
import { fingerprintIn, storedIds } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

interface Row {
  case: string;
  kind: string;
  cli?: string;
  exit?: number;
  http?: string;
  status?: number;
}

const PAGE = 'docs/10-exit-codes-and-statuses.md';

/** The rows of the table in docs/10 whose header is `| case | kind | CLI | exit | admin API | HTTP |`. */
function readmeRows(): Row[] {
  const example = (cell: string) => (cell === '–' ? undefined : /^`(.+)`$/.exec(cell)?.[1]);
  const code = (cell: string) => (cell === '–' ? undefined : Number(cell));
  return docTable(PAGE, 'case | kind | CLI | exit | admin API | HTTP').map((cells) => {
    const [label, kind, cli, exit, http, status] = cells as [string, string, string, string, string, string];
    return { case: label, kind, cli: example(cli), exit: code(exit), http: example(http), status: code(status) };
  });
}

/** Splits a command line as a shell does for these examples: words, "quoted words", and `$NAME` from `env`. */
function words(line: string, env: NodeJS.ProcessEnv): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) =>
    (m[1] ?? m[2]!).replace(/\$([A-Z_]+)/g, (_, name: string) => env[name] ?? ''),
  );
}

/** What one row needs beyond its examples: the state it names, where its request goes, what its answers say. */
interface Scenario {
  /** The observation of issue 25 this row answers (what the command did before), for the test's title. */
  observed?: string;
  /** Brings the fixture to the state the row's examples need; safe to run again. */
  given?: () => Promise<void>;
  /** What the CLI's one line on stderr (or its output, exit 0) and the API's message say (a function: once ids are known). */
  says?: RegExp | (() => RegExp);
  /** The admin API the request goes to (default: the one beside the worker), and whether it carries the token. */
  api?: () => FastifyInstance;
  withoutToken?: boolean;
  /** More about the answers. */
  cli?: (result: CliResult) => void | Promise<void>;
  http?: (response: LightMyRequestResponse) => void;
  /** The CLI line and the request at once (they name different runs); else one after the other. */
  concurrent?: boolean;
  timeoutMs?: number;
  /** More of the CLI's environment (a key the line's store holds). */
  cliEnv?: Record<string, string>;
}

const TASK_QUEUE = 'rekey-exit-codes';
const [gen1, gen2] = [randomUUID(), randomUUID()];
const [held1, held2] = [randomUUID(), randomUUID()];
const talosKeys = { v1: randomBytes(32), v2: randomBytes(32) };

describe("the README's table of exit codes and HTTP statuses, row by row, against the built CLI and the admin API", () => {
  const rows = readmeRows();
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let heldDb: TestDatabase;
  let keyring: FileKeyring;
  let worker: Worker;
  let running: Promise<void>;
  let targets: TargetRuntimes;
  let api: FastifyInstance;
  let idleApi: FastifyInstance;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-exit-codes-'));
  const configFile = path.join(scratch, 'rekey.yaml');
  const keyringFile = path.join(scratch, 'keyring.json');
  // `foreign`'s keyring: its KEKs belong to the same table in another database, whose deployment made the file.
  const foreignKeyringFile = path.join(scratch, 'foreign-keyring.json');
  const foreignOwner = keyspaceNamed(randomUUID(), 'public.foreign_secrets').id;

  const b64u = (key: Buffer) => key.toString('base64url');
  // A keyspace is a table in a database, and a key store belongs to one: each Talos-shaped target has a table (a copy
  // of Talos's secrets) and keys of its own.
  const talosTarget = (prefix: string, table: string) => ({
    preset: 'talos',
    table: `public.${table}`,
    keys: { provider: 'env', prefix },
  });
  const TALOS_COPIES = [
    'gateway_secrets',
    'late_secrets',
    'halted_secrets',
    'fresh_secrets',
    'fresh_api_secrets',
    'idle_secrets',
    'idle_api_secrets',
    'foreign_secrets',
  ];
  // Every target the rows name; JSON is YAML.
  const config = {
    targets: {
      ledger: { preset: 'talos', table: 'public.ledger', keys: { provider: 'env', prefix: 'LEDGER' } },
      gateway: {
        preset: 'talos',
        table: 'public.gateway_secrets',
        keys: { provider: 'env', prefix: 'GATEWAY', idPattern: '^[a-z0-9][a-z0-9_-]{0,31}$' },
      },
      held: {
        preset: 'mycelium',
        database: { urlEnv: 'HELD_DATABASE_URL' },
        keys: {
          provider: 'mycelium-token-secret',
          current: { env: 'HELD_TOKEN_SECRET' },
          old: { env: 'HELD_OLD_TOKEN_SECRET' },
        },
      },
      late: talosTarget('LATE', 'late_secrets'),
      halted: talosTarget('HALTED', 'halted_secrets'),
      fresh: talosTarget('FRESH', 'fresh_secrets'),
      'fresh-api': talosTarget('FRESH_API', 'fresh_api_secrets'),
      idle: talosTarget('IDLE', 'idle_secrets'),
      'idle-api': talosTarget('IDLE_API', 'idle_api_secrets'),
      foreign: {
        preset: 'talos',
        table: 'public.foreign_secrets',
        keys: { provider: 'file', file: foreignKeyringFile },
      },
      offline: {
        preset: 'talos',
        database: { url: 'postgres://rekey@127.0.0.1:1/offline' },
        keys: { provider: 'env', prefix: 'OFFLINE' },
      },
    },
  };

  /** The worker's environment: the keys of every target (TALOS_KEK_v1 alone: the environment cannot generate). */
  function workerEnv(): NodeJS.ProcessEnv {
    const keys: Record<string, string> = {
      TALOS_KEK_v1: b64u(talosKeys.v1),
      GATEWAY_KEK_v1: b64u(talosKeys.v1),
      GATEWAY_KEK_V2: b64u(talosKeys.v2),
      MYC_OLD_TOKEN_SECRET: gen1,
      MYC_TOKEN_SECRET: gen2,
      HELD_OLD_TOKEN_SECRET: held1,
      HELD_TOKEN_SECRET: held2,
      HELD_DATABASE_URL: heldDb.url,
    };
    for (const prefix of ['LATE', 'HALTED', 'FRESH', 'FRESH_API', 'IDLE', 'IDLE_API']) {
      keys[`${prefix}_KEK_v1`] = b64u(talosKeys.v1);
      keys[`${prefix}_KEK_v2`] = b64u(talosKeys.v2);
    }
    return keys;
  }

  /** A row's CLI line, run as written by the built CLI (leading `NAME=value` words set its environment). */
  function runExample(line: string, extra: Record<string, string> = {}): Promise<CliResult> {
    const cliEnv: NodeJS.ProcessEnv = {
      ...extra,
      PATH: process.env.PATH,
      DATABASE_URL: db.url,
      REKEY_CONFIG: configFile,
      REKEY_KEYRING_FILE: keyringFile,
      // The variable the configuration names for `held`'s database: the CLI computes its keyspace there.
      HELD_DATABASE_URL: heldDb.url,
    };
    const parts = words(line, cliEnv);
    while (/^[A-Z_]+=/.test(parts[0]!)) {
      const [name, ...value] = parts.shift()!.split('=');
      cliEnv[name!] = value.join('=');
    }
    expect(parts.shift()).toBe('rekey');
    return runRekey(['--address', env.address, '--task-queue', TASK_QUEUE, ...parts], cliEnv, 100_000);
  }

  /** A row's HTTP request, sent as written. */
  function sendExample(line: string, scenario: Scenario): Promise<LightMyRequestResponse> {
    const [, method, url, body] = /^(GET|POST) (\S+)(?: (.+))?$/.exec(line)!;
    return (scenario.api?.() ?? api).inject({
      method: method as 'GET' | 'POST',
      url: url!,
      headers: scenario.withoutToken ? {} : { authorization: 'Bearer exit-codes-token-0123' },
      ...(body !== undefined && { payload: JSON.parse(body) as object }),
    });
  }

  /** A target's keyspace as the worker and the admin API resolve it. */
  const keyspaceOf: KeyspaceLookup = async (target) => (targets.has(target) ? targets.keyspace(target) : undefined);
  /** The workflow id of a target's rotations (its keyspace's), and of mycelium's migration, escaped for a pattern. */
  const ids: Record<string, string> = {};
  const idOf = (target: string) => ids[target]!.replaceAll('.', '\\.');

  const latest = (target: string) => findRotation(env.client, target, keyspaceOf).catch(() => undefined);

  /** `held`: a Mycelium rotation from generation 1 to 2 in its grace period (7 days): running, '1' decrypt-only. */
  async function heldRotation(): Promise<void> {
    if ((await latest('held'))?.status !== 'RUNNING') {
      await startRotation(
        env.client,
        { target: 'held', from: '1', to: '2' },
        { taskQueue: TASK_QUEUE, keyspace: (await keyspaceOf('held'))! },
      );
    }
    const { handle } = await findRotation(env.client, 'held', keyspaceOf);
    await progressUntil(handle, (p) => p.phase === 'grace');
  }

  /** `ledger`: its rotation was refused (the table does not exist), so its latest run failed. */
  async function ledgerRefused(): Promise<void> {
    if ((await latest('ledger'))?.status === 'FAILED') return;
    await expect(
      startRotation(
        env.client,
        { target: 'ledger', from: 'v1', to: 'v2' },
        { taskQueue: TASK_QUEUE, keyspace: (await keyspaceOf('ledger'))! },
      ),
    ).rejects.toThrow(RunFailedError);
  }

  const SCENARIOS: Record<string, Scenario> = {
    'started: validate accepted the rotation': {
      says: () =>
        new RegExp(
          `started rotation ${idOf('fresh')}@\\S+ of target 'fresh' \\('v1' → 'v2'\\)|rotation of target 'fresh-api' started \\('v1' → 'v2'\\)`,
        ),
    },
    'a dry run: its report': {
      says: /dry run of target 'rekey', 'v1' → 'v2': nothing was written|rotation of target 'rekey' started/,
    },
    'a request of the wrong shape (the same KEK twice, a duration that is not one)': {
      says: /from and to are both 'v1': rotate to a different KEK/,
    },
    'a restore window shorter than the minimum (1d), without a reason': {
      observed: 'a restore window of 0s was accepted: a retired KEK could be destroyed as soon as it retired',
      says: /restore window '0s' .* is shorter than the minimum of 1d: .*--allow-short-restore-window <reason> \(allow_short_restore_window in the admin API\)/,
    },
    'a malformed value or an unknown option, in any command': {
      observed: '`--every 90x` exited 1, a missing `--note` 2',
      says: /argument '90x' is invalid|batch_size must be >= 1/,
    },
    'a required option or field left out': {
      says: /required option '--note <text>' not specified|must have required property 'note'/,
    },
    'a target no configuration names': {
      says: /unknown target 'nowhere'/,
    },
    'a target whose table does not exist': {
      observed:
        'a target table that does not exist was "started" (exit 0), then failed; 1 or 2 depending on the command',
      says: /target 'ledger': table public\.ledger does not exist in database/,
    },
    'a KEK no key source holds, watched with `--wait`': {
      observed: '`rekey rotate --to v9` printed "started" and exited 0 (1 with --wait), then the run failed; HTTP 202',
      says: /unknown KEK 'v9'/,
      cli: (result) => expect(result.stdout).not.toContain('started rotation'),
    },
    'a dry run that validate refuses': {
      observed: 'a dry run that could not succeed exited 1 ("dry run failed"), HTTP 202',
      says: /unknown KEK 'v9'/,
    },
    'a key in the environment under an id the target forbids': {
      observed: 'an env-key id the target forbids was "started" (exit 0, HTTP 202), then failed (1 with --wait)',
      says: /GATEWAY_KEK_V2: KEK id 'V2' does not match this target's rule/,
    },
    '`new` from a key source that cannot generate KEKs': {
      observed: 'a source that cannot generate `new` was "started" (exit 0, HTTP 202), then failed',
      says: /cannot generate KEKs/,
    },
    'a migration of a target that has no fields to migrate': {
      observed: 'a migration that could not succeed was "started" (exit 0, HTTP 202), then failed',
      says: /target 'talos' has no encrypted fields to migrate/,
    },
    'a step a key store rekey may not write leaves to the operator (a new KEK in the environment)': {
      cliEnv: { REKEY_KEK_v1: talosKeys.v1.toString('base64url') },
      observed: '`keys generate` on the environment said only "add the KEK there yourself"',
      says: /environment variables REKEY_KEK_<id> is read-only to rekey: set REKEY_KEK_v2 \(32 random bytes as base64url: openssl rand -base64 32/,
    },
    'a setting the command needs is missing': {
      says: /DATABASE_URL is not set/,
    },
    'a configuration whose targets share a table or a key store (refused when it loads)': {
      // HELD_DATABASE_URL names mycelium's database: `held` and `mycelium` are then one table of one database.
      says: /targets 'mycelium' and 'held' are one keyspace: both are table \S+ in the database of the same URL/,
    },
    'a rotation that does not exist': {
      says: /no rotation 'nosuch'/,
    },
    'a migration that does not exist': {
      says: /no migration 'dek-migration-nosuch'/,
    },
    'a schedule that does not exist': {
      says: /no schedule 'nosuch'/,
    },
    'a KEK to restore that the registry does not know': {
      observed: 'an unknown KEK to restore answered 422 (exit 5)',
      says: /KEK 'v9' is not known to the registry of target 'rekey'/,
    },
    'a retired KEK whose restore window has ended (its destruction is under way)': {
      // The same refusal, in the same words, on both surfaces: the step that cannot be undone is not undone. The
      // CLI reads rekey's own KEKs where the worker does (the keyring file).
      cliEnv: { REKEY_KEY_PROVIDER: 'file' },
      says: /^(rekey: )?KEK 'v0' of target 'rekey' cannot be restored: its restore window ended at \S+; it is being destroyed$/m,
    },
    'a rotation of the target already running': {
      given: heldRotation,
      says: () => new RegExp(`a rotation of target 'held' is already running: ${idOf('held')}@`),
      http: (response) => expect(response.json()).toMatchObject({ error: 'ROTATION_ALREADY_RUNNING' }),
    },
    'a migration of the target already running': {
      given: async () => {
        // Paused before its first plan (the signal comes with the start): it holds there, running.
        const keyspace = (await keyspaceOf('mycelium'))!;
        const workflowId = migrationWorkflowIdOf('mycelium', keyspace);
        const handle = env.client.workflow.getHandle(workflowId);
        const status = await handle.describe().then(
          (d) => d.status.name,
          () => 'NONE',
        );
        if (status === 'RUNNING') return;
        await env.client.workflow.signalWithStart(migrateDek, {
          workflowId,
          taskQueue: TASK_QUEUE,
          args: [{ target: 'mycelium', keyspace: keyspace.id }],
          signal: pauseSignal,
          workflowIdReusePolicy: 'ALLOW_DUPLICATE',
        });
      },
      says: () => new RegExp(`a migration of target 'mycelium' is already running: ${idOf('migration of mycelium')}`),
      http: (response) => expect(response.json()).toMatchObject({ error: 'MIGRATION_ALREADY_RUNNING' }),
    },
    'a migration while a rotation of its target is under way': {
      observed: 'a migration during a rotation answered 2 / 400 (bad input) for "not now"',
      given: heldRotation,
      says: /a rotation of target 'held' is under way \(KEK '1' is decrypt_only\): finish or abort it before migrating/,
    },
    'a control the run cannot honour where it is': {
      given: heldRotation,
      says: /nothing waits for the fleet now/,
    },
    'a control of a run that has ended': {
      given: ledgerRefused,
      says: () => new RegExp(`rotation ${idOf('ledger')}@\\S+ is failed, not running`),
    },
    'legacy values left that the KEK encrypted directly': {
      says: /target 'mycelium' still holds \d+ legacy value\(s\) encrypted directly by its KEK/,
    },
    'a key held under a registered KEK id that is not the registered key': {
      given: async () => {
        // Another worker provisioned v3 with other bytes: this worker's v3 is not the registered key.
        if (!(await storedIds(keyring)).includes('v3')) await generateKek(keyring, 'v3');
        const registry = new KekRegistry(db.pool, BUILTIN_TARGET);
        if (!(await registry.get('v3'))) await registry.register('v3', kekFingerprint(randomBytes(32)));
      },
      says: /KEK 'v3' in the key provider has fingerprint kcv1:\w+, but the registry recorded kcv1:\w+: this is a different key/,
    },
    'a KEK whose key store records another keyspace as its owner': {
      says: () =>
        new RegExp(
          `not rotating with KEK 'v1': keyring file \\S+ records it as keyspace ${foreignOwner.replaceAll('.', '\\.')}'s, and target 'foreign' is keyspace`,
        ),
    },
    'a run that failed, read with `status`: the code of its failure (the API: `status: "failed"`)': {
      observed: '`rekey status` of a failed run exited 0',
      given: ledgerRefused,
      says: () =>
        new RegExp(`rotation ${idOf('ledger')}@\\S+ failed: target 'ledger': table public\\.ledger does not exist`),
      http: (response) =>
        expect(response.json()).toMatchObject({
          status: 'failed',
          last_error: expect.stringContaining('table public.ledger does not exist') as unknown,
        }),
    },
    'a run that fails after validate accepted it, watched with `--wait` (here `ApplicationNotReady`)': {
      says: () => new RegExp(`rotation ${idOf('late')}@\\S+ failed: waited 1s for the application to promote`),
      cli: (result) => expect(result.stdout).toContain(`started rotation ${ids.late}@`),
    },
    'a run that was aborted, read with `status` or `--wait` (the API: `status: "failed"`)': {
      given: async () => {
        const last = await latest('halted');
        if (last?.status === 'COMPLETED') return;
        const started = await startRotation(
          env.client,
          { target: 'halted', from: 'v1', to: 'v2' },
          { taskQueue: TASK_QUEUE, keyspace: (await keyspaceOf('halted'))! },
        );
        await progressUntil(started.handle, (p) => p.waiting?.kind === 'application');
        await started.handle.executeUpdate(abortUpdate, { args: ['change window closed'] });
        expect(await resultWithin<RotationReport>(started.handle)).toMatchObject({ outcome: 'aborted' });
      },
      says: () => new RegExp(`rotation ${idOf('halted')}@\\S+: aborted: change window closed`),
      http: (response) => expect(response.json()).toMatchObject({ status: 'failed', outcome: 'aborted' }),
    },
    'no verdict within a minute: the run stays started': {
      observed: "the answer's code was 'internal', the kind's (read as a bug in rekey), with no next step",
      api: () => idleApi,
      concurrent: true,
      says: () =>
        new RegExp(
          `(${idOf('idle')}|${idOf('idle-api')})@\\S+ started, but gave no verdict within 1m 0s: no worker has taken it up \\(is a rekey worker polling task queue 'idle'\\?\\)`,
        ),
      cli: (result) => {
        const suffix = `(no_verdict; next: ${CLIENT_ERROR_ANSWERS.NoVerdictError.next})`;
        expect(result.stderr.trimEnd().slice(-suffix.length)).toBe(suffix);
      },
      http: (response) =>
        expect(response.json()).toMatchObject({ error: 'no_verdict', next: CLIENT_ERROR_ANSWERS.NoVerdictError.next }),
      timeoutMs: 180_000,
    },
    'a run no worker answers for, read with `status` (no worker polls its task queue)': {
      observed: 'rekey status said "Failed to query Workflow" and the admin API 500 "internal error"',
      given: async () => {
        // The row above leaves both runs started on 'idle'; started here too when this row runs alone.
        for (const target of ['idle', 'idle-api']) {
          const status = await findRotation(env.client, ids[target]!).then(
            (found) => found.status,
            () => undefined,
          );
          if (status !== 'RUNNING')
            await env.client.workflow.start('rotateKek', {
              taskQueue: 'idle',
              workflowId: ids[target]!,
              args: [{ target, from: 'v1', to: 'v2', keyspace: (await keyspaceOf(target))!.id }],
            });
        }
      },
      api: () => idleApi,
      concurrent: true,
      says: () =>
        new RegExp(
          `rotation (${idOf('idle')}|${idOf('idle-api')})@\\S+ is running, but no worker answered its progress query in time: is a rekey worker of this database polling task queue 'idle' in namespace 'default'\\?`,
        ),
      timeoutMs: 180_000,
    },
    'a control of a run no worker polls for: refused, not sent': {
      observed:
        'rekey abort, which the answer of a run started without a verdict names, waited for ever; so did the admin API',
      given: async () => {
        await SCENARIOS['a run no worker answers for, read with `status` (no worker polls its task queue)']!.given!();
      },
      api: () => idleApi,
      concurrent: true,
      says: () =>
        new RegExp(
          `rotation (${idOf('idle')}|${idOf('idle-api')})@\\S+ is running, but no worker polls its task queue 'idle' in namespace 'default': nothing can take the control, and it was not sent`,
        ),
      cli: async () => {
        // Not sent: both runs still run, with nothing of an abort in their histories.
        for (const target of ['idle', 'idle-api']) {
          const { status, handle } = await findRotation(env.client, ids[target]!);
          expect(status).toBe('RUNNING');
          const events = (await handle.fetchHistory()).events ?? [];
          expect(
            events.filter(
              (e) =>
                e.workflowExecutionUpdateAdmittedEventAttributes || e.workflowExecutionUpdateAcceptedEventAttributes,
            ),
          ).toEqual([]);
        }
      },
      timeoutMs: 180_000,
    },
    'Temporal does not answer': {
      says: /cannot reach Temporal at 127\.0\.0\.1:1/,
    },
    'the database unreachable: down, refusing connections or this login, or silent past the connect timeout': {
      observed: 'the admin API answered 500 "internal error"',
      says: /^the database is unreachable \(connect ECONNREFUSED 127\.0\.0\.1:1\): retry once it answers|rekey: the database is unreachable \(connect ECONNREFUSED 127\.0\.0\.1:1\)/,
      http: (response) => {
        expect(response.headers['retry-after']).toBe('5');
        expect(response.json()).toMatchObject({ error: 'database_unreachable' });
      },
    },
    'no valid bearer token (the example is sent without one)': {
      withoutToken: true,
      says: /a valid bearer token is required/,
    },
  };

  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    // rekey's own table (v1 active, v2 in the keyring), Talos's secrets and Mycelium's tables, in one database.
    keyring = FileKeyring.open(keyringFile, { create: true });
    await generateKek(keyring, 'v1');
    await generateKek(keyring, 'v2');
    const foreignKeyring = FileKeyring.open(foreignKeyringFile, { create: true });
    await generateKek(foreignKeyring, 'v1', { owner: foreignOwner });
    await generateKek(foreignKeyring, 'v2', { owner: foreignOwner });
    foreignKeyring.close();
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keyring, 'v1'));
    await seedTenants({ db: db.pool, keys: keyring, kekId: 'v1', count: 50 });
    // A KEK retired before v1 whose restore window has ended; the keyring file still holds it.
    await generateKek(keyring, 'v0');
    await db.pool.query(
      `INSERT INTO rekey.keks (target, kek_id, state, fingerprint, retired_at, restorable_until)
       VALUES ($1, 'v0', 'retired', $2, now() - interval '40 days', now() - interval '10 days')`,
      [BUILTIN_TARGET, await fingerprintIn(keyring, 'v0')],
    );
    await createTalosSchema(db.pool);
    await seedSecrets(db.pool, talosKeys.v1, 'v1', 20, 'v1');
    for (const table of TALOS_COPIES) {
      await db.pool.query(`CREATE TABLE public.${table} (LIKE public.secrets INCLUDING ALL)`);
      await db.pool.query(`INSERT INTO public.${table} SELECT * FROM public.secrets`);
    }
    await createMyceliumSchema(db.pool);
    await seedLegacyInventory(db.pool, kekOf(gen1), { tenants: 6, users: 3 });
    // `held`'s own Mycelium database, without legacy values: its rotation goes on and waits for its application.
    ({ db: heldDb } = await createApplicationDatabase(createMyceliumSchema));
    await seedMyceliumTenants(heldDb.pool, 12, kekOf(held1), 1);
    fs.writeFileSync(configFile, JSON.stringify(config));

    targets = new TargetRuntimes({
      db: db.pool,
      keys: keyring,
      config: parseTargetsConfig(JSON.stringify(config), configFile),
      env: workerEnv(),
    });
    worker = await createWorker({
      connection: env.nativeConnection,
      taskQueue: TASK_QUEUE,
      db: db.pool,
      keys: keyring,
      targets,
      workflowBundle: workflowBundle(),
    });
    running = worker.run();
    for (const target of ['fresh', 'held', 'ledger', 'late', 'halted', 'idle', 'idle-api', 'mycelium']) {
      ids[target] = rotationWorkflowId(target, (await keyspaceOf(target))!);
    }
    ids['migration of mycelium'] = migrationWorkflowIdOf('mycelium', (await keyspaceOf('mycelium'))!);
    const adminOptions = {
      client: env.client,
      targets,
      defaultTarget: BUILTIN_TARGET,
      token: 'exit-codes-token-0123',
      configuredCurrentKekId: () => undefined,
    };
    api = await buildAdminServer({ ...adminOptions, taskQueue: TASK_QUEUE });
    // No worker polls 'idle': what a caller gets when no verdict comes.
    idleApi = await buildAdminServer({ ...adminOptions, taskQueue: 'idle' });
  });

  afterAll(async () => {
    await api?.close();
    await idleApi?.close();
    worker?.shutdown();
    await running;
    await targets?.close();
    keyring?.close();
    await heldDb?.drop();
    await db?.drop();
    await env?.teardown();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('every row of the table has a test here and every test a row; a row of a kind has that kind’s exit code and status', () => {
    expect(rows.length).toBeGreaterThan(20);
    expect(rows.map((row) => row.case).filter((label) => SCENARIOS[label] === undefined)).toEqual([]);
    expect(Object.keys(SCENARIOS).filter((label) => !rows.some((row) => row.case === label))).toEqual([]);
    for (const row of rows) {
      if (row.kind === 'ok') {
        expect([row.case, row.exit, row.status === undefined || row.status < 300]).toEqual([row.case, 0, true]);
      } else if (row.kind in HTTP_STATUSES) {
        const kind = row.kind as ErrorKind;
        expect([row.case, row.exit, row.status]).toEqual([
          row.case,
          row.cli === undefined ? undefined : EXIT_CODES[kind],
          row.http === undefined ? undefined : HTTP_STATUSES[kind],
        ]);
      }
    }
  });

  for (const row of rows) {
    const scenario = SCENARIOS[row.case] ?? {};
    const answers = [
      row.cli !== undefined ? `exit ${row.exit}` : undefined,
      row.http !== undefined ? `HTTP ${row.status}` : undefined,
    ].filter(Boolean);
    const title = `${row.case}: ${answers.join(', ')}${scenario.observed ? ` (observed before: ${scenario.observed})` : ''}`;
    it(
      title,
      async () => {
        await scenario.given?.();
        const says = typeof scenario.says === 'function' ? scenario.says() : scenario.says;
        const runCli = () => (row.cli === undefined ? undefined : runExample(row.cli, scenario.cliEnv));
        const send = () => (row.http === undefined ? undefined : sendExample(row.http, scenario));
        const [cli, http] = scenario.concurrent
          ? await Promise.all([runCli(), send()])
          : [await runCli(), await send()];
        if (cli) {
          expect({ exit: cli.code, stderr: cli.stderr }, cli.stderr).toMatchObject({ exit: row.exit });
          const said = row.exit === 0 ? cli.stdout : cli.stderr;
          if (says) expect(said).toMatch(says);
          if (row.exit !== 0) expect(cli.stderr.trim().split('\n')[0]).toMatch(/^(rekey|error): /);
          await scenario.cli?.(cli);
        }
        if (http) {
          expect({ status: http.statusCode, body: http.body }).toMatchObject({ status: row.status });
          const body = http.json<{ message?: string }>();
          if (says && body.message !== undefined) expect(body.message).toMatch(says);
          scenario.http?.(http);
        }
      },
      scenario.timeoutMs ?? 120_000,
    );
  }
});
