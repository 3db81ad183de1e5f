// Issue 25, "tctl, as the operators in the design use it": with tctl v1 alone (no update command), an operator takes a
// Mycelium rotation to its end (its confirmation included) and pauses and resumes a migration. The tctl lines run here
// are the guide's (docs/04), read from its fenced block and run as typed (test/helpers/as-typed.ts: in bash, the server
// in TEMPORAL_CLI_ADDRESS, WF and MIG set as the page sets them), so the guide cannot drift; no update is sent here.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool, PoolClient } from 'pg';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../src/activities';
import { migrationWorkflowIdOf, rotationWorkflowId } from '../../src/rotation/identity';
import type { ProgressReport } from '../../src/rotation/progress';
import { KekRegistry } from '../../src/store/kek-registry';
import type { MigrationReport } from '../../src/workflows';
import { createApplicationDatabase, type TestDatabase } from '../helpers/database';
import { keyspaceIn } from '../helpers/keyspace';
import { testKeys } from '../helpers/keys';
import {
  checkWithOneKek,
  createMyceliumSchema,
  gatewayReads,
  kekOf,
  myceliumShape,
  seedLegacyInventory,
  seedMyceliumTenants,
  storedAt,
  type InventoryValue,
} from '../helpers/mycelium';
import { eventually } from '../helpers/eventually';
import { docPage } from '../helpers/readme';
import { createDevServerEnv, resultWithin, untilNoActivityPending, within, workflowBundle } from '../helpers/temporal';
import { asTyped, operatorEnv, runLine } from '../helpers/as-typed';

const PAGE = 'docs/04-rotate-watch-pause-confirm.md';

/** The tctl lines of the guide's section on the temporal CLI (docs/04), continuation lines joined, comments dropped. */
function readmeTctlLines(): string[] {
  const page = docPage(PAGE);
  const start = page.indexOf('\n## The same with the `temporal` CLI');
  const section = page.slice(start, page.indexOf('\n## ', start + 1));
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const block = blocks.find((b) => /^tctl /m.test(b)) ?? '';
  return block
    .replace(/\\\n\s*/g, '')
    .split('\n')
    .map((line) => line.replace(/\s+#.*$/, '').trim())
    .filter((line) => line.startsWith('tctl '));
}

/**
 * The workflow ids the README's `WF` and `MIG` stand for in the database `db`: the target's keyspace's rotation id
 * (`kek-rotation-<target>.<db>`, what `rekey kek-status` prints), and the migration's, which is the same with
 * `dek-migration-` (as the README says). The one place the test makes them; the rotation's test also checks that
 * `tctl workflow list` shows the running rotation under this id.
 */
async function operatorIds(target: string, db: Pool): Promise<{ WF: string; MIG: string }> {
  const keyspace = await keyspaceIn(db, target);
  const ids = { WF: rotationWorkflowId(target, keyspace), MIG: migrationWorkflowIdOf(target, keyspace) };
  expect(ids.MIG).toBe(ids.WF.replace(/^kek-rotation-/, 'dek-migration-'));
  return ids;
}

/** The JSON a `tctl workflow query` prints after its heading (`Query result:` then the answers as a JSON array). */
function queryAnswer<R>(stdout: string): R {
  const json = stdout.slice(stdout.search(/[[{]/));
  const parsed = JSON.parse(json) as R | R[];
  return Array.isArray(parsed) ? parsed[0]! : parsed;
}

/** Values of the inventory still legacy (v1, no prefix), read with plain SQL. */
async function legacyLeft(db: TestDatabase, values: InventoryValue[]): Promise<InventoryValue[]> {
  const left: InventoryValue[] = [];
  for (const value of values) if (!(await storedAt(db.pool, value))?.startsWith('v2:')) left.push(value);
  return left;
}

describe('tctl alone drives a Mycelium rotation to its end and pauses a migration (no update)', () => {
  let env: TestWorkflowEnvironment;
  // tctl writes its settings to ~/.config/temporalio/tctl.yaml: a home of its own keeps the user's untouched.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-tctl-home-'));
  const lines = readmeTctlLines();
  const used = new Set<string>();
  let ids: { WF: string; MIG: string };
  const [gen1, gen2] = [randomUUID(), randomUUID()];

  beforeAll(async () => {
    env = await createDevServerEnv();
  });
  afterAll(async () => {
    await env?.teardown();
    fs.rmSync(home, { recursive: true, force: true });
  });

  /** The README line that holds every one of `parts`: there must be exactly one. */
  function line(...parts: string[]): string {
    const found = lines.filter((l) => parts.every((p) => l.includes(p)));
    expect({ parts, found: found.length }).toEqual({ parts, found: 1 });
    used.add(found[0]!);
    return found[0]!;
  }

  /** Runs a README line as typed with the built tctl against the dev server; it must exit 0 and print no error. */
  async function tctl(readmeLine: string): Promise<string> {
    expect(readmeLine.split(' ')[0]).toBe('tctl');
    const servers = { temporalAddress: env.address };
    const shell = {
      ...operatorEnv(servers),
      ...ids,
      HOME: home,
      // A busy machine may take longer than tctl's default 5 s for an RPC: its --context_timeout, from the environment.
      TEMPORAL_CONTEXT_TIMEOUT: '30',
    };
    const result = await runLine(asTyped(readmeLine, {}, servers), shell, 40_000);
    expect({ readmeLine, code: result.code, stderr: result.stderr }).toEqual({ readmeLine, code: 0, stderr: '' });
    return result.stdout;
  }

  /** Runs a README query line until its answer satisfies `predicate` (bounded; the last answer in the failure). */
  async function queryUntil<R>(readmeLine: string, predicate: (answer: R) => boolean, withinMs = 60_000): Promise<R> {
    let last: R | undefined;
    const poll = async (): Promise<R> => {
      for (;;) {
        last = queryAnswer<R>(await tctl(readmeLine));
        if (predicate(last)) return last;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    };
    return within(poll(), withinMs, () => `${readmeLine}: never matched; last answer ${JSON.stringify(last)}`);
  }

  it('a Mycelium rotation, started, watched, confirmed and ended with tctl signals alone', async () => {
    const { db, shape } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    try {
      ids = await operatorIds('mycelium', db.pool);
      const tenants = await seedMyceliumTenants(db.pool, 200, kekOf(gen1), 1);
      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue: 'rekey',
        workflowBundle: workflowBundle(),
        activities: createActivities({
          db: db.pool,
          keys: testKeys(['v1']),
          env: { MYC_OLD_TOKEN_SECRET: gen1, MYC_TOKEN_SECRET: gen2 },
        }),
      });
      await worker.runUntil(async () => {
        expect(await tctl(line('workflow start', 'rotateKek'))).toContain(`Started Workflow Id: ${ids.WF},`);
        // What the operator sees of the running one: its id, found by its target.
        const list = line('workflow list', 'RekeyTarget');
        await within(
          (async () => {
            while (!(await tctl(list)).includes(ids.WF)) await new Promise((resolve) => setTimeout(resolve, 200));
          })(),
          60_000,
          () => `${list} never showed ${ids.WF}`,
        );

        const progress = line('workflow query', '"$WF"');
        const promote = line('confirmStep', '"promote"');
        // Mycelium's own settings (MYC_TOKEN_SECRET is generation 2) are the evidence of promotion: no word needed.
        const inGrace = await queryUntil<ProgressReport>(progress, (p) => p.phase === 'grace');
        expect(inGrace).toMatchObject({ outcome: 'running', counters: { rewrapped: 200, failed: 0 } });
        await tctl(line('--name setGrace', 'endNow'));

        // Mycelium's settings, not rekey, decide when generation 1 is gone: the run waits for the operator's word.
        const waiting = await queryUntil<ProgressReport>(progress, (p) => p.waiting?.step === 'retire');
        expect(waiting.waiting).toMatchObject({ kind: 'application', step: 'retire' });
        // A confirmation of the step the run does not wait for changes nothing; the progress says why.
        await tctl(promote);
        const refused = await queryUntil<ProgressReport>(progress, (p) => p.note?.includes('ignored') === true);
        expect(refused.note).toBe(
          `confirmStep signal ignored: the rotation waits for the application to retire (${waiting.waiting!.instructions}), not to promote: confirm --step retire once that is done`,
        );
        expect(refused).toMatchObject({ phase: 'retire', waiting: { step: 'retire' } });

        await tctl(line('confirmStep', '"retire"'));
        const done = await queryUntil<ProgressReport>(progress, (p) => p.outcome !== 'running');
        expect(done.outcome).toBe('completed');
        // The run records its end in the history after its outcome is decided: describe until it has closed.
        const described = await eventually(
          'tctl workflow describe to show the run Completed',
          async () => {
            const text = await tctl(line('workflow describe', '"$WF"'));
            return /"status": "Completed"/.test(text) && text;
          },
          { every: 500 },
        );
        expect(described).toMatch(/"status": "Completed"/);
        expect(described).toContain(`"workflowId": "${ids.WF}"`);
      });

      // With the new token_secret alone (the fixture's own AES-GCM, not rekey's).
      expect(await checkWithOneKek(db.pool, kekOf(gen2), 2, tenants)).toEqual([]);
      expect(await myceliumShape(db.pool)).toEqual(shape);
      const registry = new KekRegistry(db.pool, 'mycelium');
      expect(await registry.get('1')).toMatchObject({ state: 'retired' });
      expect(await registry.get('2')).toMatchObject({ state: 'active' });
    } finally {
      await db.drop();
    }
  });

  it("a migration paused with tctl's signal: its parts stop (the progress query says so) and write nothing until resumed", async () => {
    const { db } = await createApplicationDatabase(createMyceliumSchema, myceliumShape);
    let locker: PoolClient | undefined;
    try {
      ids = await operatorIds('mycelium', db.pool);
      const kek = kekOf(gen1);
      const seeded = await seedLegacyInventory(db.pool, kek, { tenants: 30, users: 20 });
      const totp = seeded.values.filter((v) => v.field === 'totp_secret');
      const others = seeded.values.filter((v) => v.field !== 'totp_secret');
      expect(totp.length).toBeGreaterThan(0);
      // The application holds every user row in a long transaction: the first field (TOTP secrets, in `user`) cannot
      // finish, so the pause lands while a part runs, whatever the machine's speed.
      locker = await db.pool.connect();
      await locker.query('BEGIN');
      await locker.query('SELECT id FROM public."user" FOR UPDATE');

      const worker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue: 'rekey',
        workflowBundle: workflowBundle(),
        activities: createActivities({ db: db.pool, keys: testKeys(['v1']), env: { MYC_TOKEN_SECRET: gen1 } }),
      });
      await worker.runUntil(async () => {
        expect(await tctl(line('workflow start', 'migrateDek'))).toContain(`Started Workflow Id: ${ids.MIG},`);
        const progress = line('workflow query', '"$MIG"');
        await queryUntil<MigrationReport>(progress, (p) => p.phase === 'migrating' && (p.partsRunning ?? 0) > 0);

        await tctl(line('--name pause', '"$MIG"'));
        const paused = await queryUntil<MigrationReport>(progress, (p) => p.paused);
        expect(paused.phase).toBe('migrating');
        // The application lets go of its rows: the part that waited on them stops at its batch's end.
        await locker!.query('COMMIT');
        locker!.release();
        locker = undefined;
        const stopped = await queryUntil<MigrationReport>(progress, (p) => p.paused && p.partsRunning === 0);
        expect(stopped.outcome).toBeUndefined();
        const handle = env.client.workflow.getHandle(ids.MIG);
        await untilNoActivityPending(handle);
        // Parts stopped before the fields after the first: those are all still legacy, and stay so while paused.
        expect(await legacyLeft(db, others)).toHaveLength(others.length);
        expect((await handle.describe()).raw.pendingActivities ?? []).toEqual([]);

        await tctl(line('--name resume', '"$MIG"'));
        const finished = await resultWithin<MigrationReport>(handle);
        expect(finished).toMatchObject({ outcome: 'completed', legacyLeft: 0, paused: false });
        expect(finished.totals.migrated).toBe(seeded.values.length);
        expect(finished.totals.casConflicts).toBe(0);
      });
      expect(await legacyLeft(db, seeded.values)).toEqual([]);
      for (const value of [...seeded.values, ...seeded.v2]) {
        expect(await gatewayReads(db.pool, kek, value)).toBe(value.plaintext);
      }
    } finally {
      if (locker) {
        await locker.query('ROLLBACK');
        locker.release();
      }
      await db.drop();
    }
  });

  it('every tctl line of the README is one the tests above ran', () => {
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.filter((l) => !used.has(l))).toEqual([]);
  });
});
