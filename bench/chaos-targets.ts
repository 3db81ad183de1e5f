// The chaos scenarios of keyspaces other than rekey's own table: a Mycelium-format and a Talos-format target, each
// rotated while the application's own code (fixture code written from ../shared/seed-systems.md with node:crypto
// alone, never rekey's codecs) reads and writes, the worker is killed with SIGKILL mid-rewrap and PostgreSQL is
// restarted. The verdict is the fixture's too: every row opens under the new KEK alone to the DEK or secret it held
// before, nothing is left on the old KEK, and the old KEK is retired only once nothing needs it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { DecryptCommand, DescribeKeyCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import type { Client, WorkflowHandle } from '@temporalio/client';
import type { Pool } from 'pg';
import { failureMessage, startRotation } from '../src/client/rotations';
import type { ScratchDatabase } from '../src/dev/databases';
import type { DevServer } from '../src/dev/dev-server';
import { startMoto } from '../src/dev/moto';
import { KmsKeys } from '../src/keyring/drivers/aws-kms';
import { BUILTIN_TARGET } from '../src/targets/builtin';
import { PRESETS } from '../src/targets/presets';
import { targetKeyspace } from '../src/targets/runtime';
import { TenantCrypto } from '../src/tenant-crypto';
import { readToolchain } from '../src/dev/toolchain';
import { projectRoot } from '../src/project-paths';
import type { ProgressReport } from '../src/rotation/progress';
import type { RotationRequest } from '../src/rotation/rotation-input';
import { migrate } from '../src/store/migrate';
import { KekRegistry } from '../src/store/kek-registry';
import { confirmStepUpdate, progressQuery } from '../src/workflows/messages';
import {
  checkWithOneKek,
  createMyceliumSchema,
  kekOf,
  MyceliumGateway,
  seedMyceliumTenants,
  unwrapDek,
} from '../test/helpers/mycelium';
import { startLiveWriter } from '../test/helpers/live-writer';
import { throttlingProxy } from '../test/helpers/throttling-proxy';
import { checkSecrets, createTalosSchema, seedSecrets, TalosGateway } from '../test/helpers/talos';
import {
  freshDatabase,
  sleep,
  spawnWorker,
  startServer,
  TASK_QUEUE,
  temporalClient,
  type WorkerProcess,
} from './harness';
import { generateKek, storedKek } from '../src/keyring/keyring';

export interface TargetScenarioOptions {
  tenants: number;
  kills: number;
  /** False with `--no-postgres-restart`: a shared cluster other work uses is left alone. */
  postgresRestart: boolean;
}

/** What a scenario of this file reports: the row of the chaos table. */
export interface TargetVerdict {
  faults: string;
  checked: number;
  losses: number;
  notes: string[];
}

const SLICES: Pick<RotationRequest, 'batchSize' | 'parallelism' | 'sliceTimeBudget' | 'gracePeriod'> = {
  batchSize: 20,
  parallelism: 2,
  sliceTimeBudget: '2s',
  gracePeriod: '1s',
};

/**
 * Errors of the application's own queries that are a connection lost to the PostgreSQL restart (the application
 * retries them). Any other error counts as a loss: a value that did not open, or one that read wrong.
 */
const CONNECTION_LOST =
  /terminating connection|Connection terminated|connection (error|refused|ended)|ECONNRE|EPIPE|starting up|shutting down|not yet accepting connections/i;

/**
 * One run's world: its own dev server (on-disk history), a database of its own holding the application's schema
 * and rekey's, and the worker process, which is killed and started again.
 */
class TargetWorld {
  client!: Client;
  worker!: WorkerProcess;
  crashes = 0;
  private closeClient!: () => Promise<void>;
  private server!: DevServer;
  private database!: ScratchDatabase;
  private readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-chaos-target-'));

  constructor(private readonly workerEnv: Record<string, string>) {}

  get db(): Pool {
    return this.database.pool;
  }

  /** The application's schema first (as it stands before rekey arrives), then rekey's bookkeeping beside it. */
  async start(createSchema: (db: Pool) => Promise<void>): Promise<void> {
    this.server = await startServer(readToolchain(), path.join(this.dir, 'temporal.db'));
    this.database = await freshDatabase('rekey_chaos_target', { migrate: false });
    await createSchema(this.db);
    const connection = await this.db.connect();
    try {
      await migrate(connection);
    } finally {
      connection.release();
    }
    ({ client: this.client, close: this.closeClient } = await temporalClient(this.server.address));
  }

  startWorker(): void {
    if (this.worker?.crashed()) this.crashes++;
    this.worker = spawnWorker({
      databaseUrl: this.database.url,
      address: this.server.address,
      keyEnv: this.workerEnv,
    });
  }

  async killWorker(): Promise<void> {
    await this.worker.kill('SIGKILL');
    await sleep(200);
    this.startWorker();
  }

  async rotate(request: RotationRequest): Promise<WorkflowHandle> {
    const target = request.target ?? BUILTIN_TARGET;
    const keyspace = await targetKeyspace(this.db, PRESETS[target]);
    const started = await startRotation(this.client, request, { taskQueue: TASK_QUEUE, keyspace });
    return started.handle;
  }

  /** A count read with plain SQL; retried while PostgreSQL restarts. */
  async count(sql: string): Promise<number> {
    for (;;) {
      try {
        const { rows } = await this.db.query<{ n: string }>(sql);
        return Number(rows[0]!.n);
      } catch {
        await sleep(100);
      }
    }
  }

  /** Waits until `done` holds of the count `sql` reads (a point in the middle of the rewrap). */
  async countUntil(sql: string, done: (n: number) => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 120_000;
    while (!done(await this.count(sql))) {
      if (Date.now() > deadline) throw new Error(`${what} never happened`);
      await sleep(50);
    }
  }

  async stop(): Promise<void> {
    await this.worker?.kill('SIGKILL');
    await this.closeClient?.();
    await this.database?.drop();
    await this.server?.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Polls the run's progress until `done` holds of it; fails with the last progress seen. */
async function progressUntil(
  handle: WorkflowHandle,
  done: (p: ProgressReport) => boolean,
  what: string,
): Promise<ProgressReport> {
  const deadline = Date.now() + 180_000;
  let last: ProgressReport | undefined;
  for (;;) {
    try {
      last = await handle.query(progressQuery);
      if (done(last)) return last;
    } catch {
      // the worker is restarting: a query waits for one
    }
    if (Date.now() > deadline)
      throw new Error(`${what} never happened; last progress: phase ${last?.phase}, waiting ${last?.waiting?.step}`);
    await sleep(200);
  }
}

/** The PostgreSQL restart of the chaos suite: the local cluster the setup made (not one DATABASE_URL names). */
async function restartPostgres(): Promise<boolean> {
  if (process.env.DATABASE_URL) return false;
  // The setup script is plain ESM beside the sources (it runs before anything is built).
  const setup = (await import(path.join(projectRoot, 'scripts', 'setup.mjs'))) as typeof import('../scripts/setup.mjs');
  setup.restartPostgres();
  return true;
}

/**
 * The faults of a rewrap: `kills` SIGKILLs of the worker spread over it, and one PostgreSQL restart past the middle;
 * `leftSql` counts the seeded rows still on the old KEK, out of `total`.
 */
async function faultsDuringRewrap(
  world: TargetWorld,
  options: TargetScenarioOptions,
  leftSql: string,
  total: number,
  /** Another fault, between the last kill and the PostgreSQL restart; it says what it did. */
  midway?: () => Promise<string>,
): Promise<string[]> {
  const reached = (share: number) =>
    world.countUntil(leftSql, (n) => n <= total * (1 - share), `the rewrap reaching ${Math.round(share * 100)}%`);
  const faults: string[] = [];
  let kills = 0;
  for (let k = 1; k <= options.kills; k++) {
    await reached(k / (options.kills + 2));
    if ((await world.count(leftSql)) === 0) break;
    await world.killWorker();
    kills++;
  }
  faults.push(`${kills} × SIGKILL of the worker mid-rewrap`);
  if (midway) {
    await reached((options.kills + 0.5) / (options.kills + 2));
    faults.push(await midway());
  }
  await reached((options.kills + 1) / (options.kills + 2));
  if (options.postgresRestart && (await world.count(leftSql)) > 0 && (await restartPostgres()))
    faults.push('1 × PostgreSQL restart');
  return faults;
}

/** What a row's own check (fixture code, after the run) found, and what its live application did meanwhile. */
interface RowCheck {
  checked: number;
  losses: number;
  notes: string[];
  /** What the application did during the run, for the row's faults. */
  live: string;
}

/** One row of the chaos table: its rotation, how far its rewrap has come, the operator's retire step, its check. */
interface ChaosRow {
  request: RotationRequest;
  /** Counts the seeded rows still on the old KEK, out of `total`. */
  leftSql: string;
  total: number;
  /** Another fault, between the last kill and the PostgreSQL restart (see faultsDuringRewrap). */
  midway?: () => Promise<string>;
  /** A target whose application owns its current KEK: what the operator does once asked, then the confirmation. */
  retire?: { before: () => Promise<void>; note: string };
  /** The row's verdict, by fixture code, once the run has ended (it stops the application first). */
  check: () => Promise<RowCheck>;
}

/**
 * The chaos of every row of this file: the worker starts, the rotation starts, the worker is killed and PostgreSQL
 * restarted while it rewraps, the operator confirms retire when asked, and the run's end, the row's own check and the
 * worker's crashes make the verdict.
 */
async function rotateUnderFaults(
  world: TargetWorld,
  options: TargetScenarioOptions,
  row: ChaosRow,
): Promise<TargetVerdict> {
  world.startWorker();
  const handle = await world.rotate(row.request);
  const faults = await faultsDuringRewrap(world, options, row.leftSql, row.total, row.midway);
  if (row.retire) {
    await progressUntil(handle, (p) => p.waiting?.step === 'retire', 'the run waiting for the retire step');
    await row.retire.before();
    await handle.executeUpdate(confirmStepUpdate, { args: [{ step: 'retire', note: row.retire.note }] });
  }
  const report = await handle.result().then(
    (r: { outcome: string }) => r.outcome,
    (err: unknown) => `failed: ${failureMessage(err)}`,
  );
  const checked = await row.check();
  const notes = report === 'completed' ? [] : [`the run ended ${report}`];
  notes.push(...checked.notes);
  if (world.worker.crashed()) world.crashes++;
  if (world.crashes > 0) notes.push(`the worker crashed ${world.crashes} time(s)`);
  return {
    faults: [...faults, checked.live].join('; '),
    checked: checked.checked,
    losses: checked.losses + world.crashes + (report === 'completed' ? 0 : 1),
    notes,
  };
}

/**
 * Mycelium: tenants whose DEKs are wrapped by token_secret generation 1 (kek_version 1), some without a DEK yet; the
 * gateway (fixture code) reads bot tokens, writes new ones under the tenants' DEKs and onboards tenants with
 * generation 2 (labelled 1, Mycelium's own trap) throughout. The operator's retire step is confirmed once the
 * gateways hold generation 2 alone: a gateway restarted with it keeps working until the end.
 */
export async function myceliumScenario(options: TargetScenarioOptions): Promise<TargetVerdict> {
  const [gen1, gen2] = [randomUUID(), randomUUID()];
  const world = new TargetWorld({
    REKEY_TARGETS: 'mycelium',
    MYC_OLD_TOKEN_SECRET: gen1,
    MYC_TOKEN_SECRET: gen2,
  });
  const gateways: MyceliumGateway[] = [];
  try {
    await world.start(createMyceliumSchema);
    const seeded = await seedMyceliumTenants(world.db, options.tenants, kekOf(gen1), 1);
    const withoutDek = await seedMyceliumTenants(world.db, Math.ceil(options.tenants / 100), null, 1);
    const tracked = [...seeded];
    // The gateways during the rotation: both generations held, generation 2 current.
    const during = new MyceliumGateway(world.db, [kekOf(gen1), kekOf(gen2)], kekOf(gen2), tracked);
    gateways.push(during);
    during.start({ onboard: true });
    return await rotateUnderFaults(world, options, {
      request: { target: 'mycelium', from: '1', to: '2', ...SLICES },
      // The seeded tenants alone ('tenant <id>'; the gateway's are 'onboarded <id>') still labelled 1.
      leftSql: `SELECT count(*) AS n FROM public.tenant WHERE kek_version = 1 AND encrypted_dek IS NOT NULL AND name LIKE 'tenant %'`,
      total: options.tenants,
      retire: {
        // The operator discards generation 1: the gateways restart holding generation 2 alone, and keep working.
        before: async () => {
          await during.stop();
          const after = new MyceliumGateway(world.db, [kekOf(gen2)], kekOf(gen2), tracked);
          gateways.push(after);
          after.start({ onboard: true });
        },
        note: 'chaos: generation 1 discarded from every gateway',
      },
      check: async () => {
        for (const gateway of gateways) await gateway.stop();
        const notes: string[] = [];
        const onboarded = gateways.flatMap((g) => g.onboarded);
        const problems = [
          ...(await checkWithOneKek(world.db, kekOf(gen2), 2, seeded)),
          // Onboarded while the run went on: wrapped by generation 2, labelled 1 unless a pass relabelled them.
          ...(await checkWithOneKek(world.db, kekOf(gen2), [1, 2], onboarded)),
          ...(await checkWithOneKek(world.db, kekOf(gen2), 1, withoutDek)),
        ];
        // Nothing at all (tracked or not) still needs generation 1: every DEK in the table opens under generation 2.
        const { rows } = await world.db.query<{ id: string; encrypted_dek: string }>(
          'SELECT id::text, encrypted_dek FROM public.tenant WHERE encrypted_dek IS NOT NULL',
        );
        let needsOld = 0;
        for (const row of rows) {
          try {
            unwrapDek(kekOf(gen2), row.id, row.encrypted_dek);
          } catch {
            needsOld++;
          }
        }
        if (needsOld > 0) notes.push(`${needsOld} DEK(s) do not open under generation 2`);
        const unreadable = gateways.flatMap((g) => g.errors).filter((e) => !CONNECTION_LOST.test(e));
        const dropped = gateways.flatMap((g) => g.errors).length - unreadable.length;
        if (unreadable.length > 0)
          notes.push(`the gateway could not read ${unreadable.length} time(s): ${unreadable[0]}`);
        if (problems.length > 0) notes.push(`${problems.length} problem(s), e.g. ${problems[0]}`);
        const registry = new KekRegistry(world.db, 'mycelium');
        const [old, current] = [(await registry.get('1'))?.state, (await registry.get('2'))?.state];
        if (old !== 'retired' || current !== 'active') notes.push(`generation 1 is ${old}, generation 2 ${current}`);
        if (dropped > 0) notes.push(`${dropped} gateway queries lost to the restart, retried`);
        const reads = gateways.reduce((sum, g) => sum + g.reads, 0);
        const rewrites = gateways.reduce((sum, g) => sum + g.rewrites, 0);
        return {
          checked: seeded.length + onboarded.length + withoutDek.length,
          losses: problems.length + needsOld + unreadable.length + (old === 'retired' && current === 'active' ? 0 : 1),
          notes,
          live: `the gateway live: ${reads} reads, ${rewrites} bot tokens rewritten, ${onboarded.length} tenants onboarded`,
        };
      },
    });
  } finally {
    for (const gateway of gateways) await gateway.stop();
    await world.stop();
  }
}

/**
 * Talos: secrets encrypted directly by TALOS_KEK_v1 (bound to their id, and older ones to their name), of lengths 0
 * to 4 KiB. The gateway (fixture code), restarted with TALOS_CURRENT_KEK_ID=v2 as the runbook's first steps say,
 * reads secrets, updates them and creates new ones under v2 throughout. Once the run waits for TALOS_KEK_v1 to go, a
 * gateway holding v2 alone takes over until the end.
 */
export async function talosScenario(options: TargetScenarioOptions): Promise<TargetVerdict> {
  const keks = { v1: randomBytes(32), v2: randomBytes(32) };
  const world = new TargetWorld({
    REKEY_TARGETS: 'talos',
    TALOS_KEK_v1: keks.v1.toString('base64url'),
    TALOS_KEK_v2: keks.v2.toString('base64url'),
    TALOS_CURRENT_KEK_ID: 'v2',
  });
  const gateways: TalosGateway[] = [];
  try {
    await world.start(createTalosSchema);
    const nameBound = Math.ceil(options.tenants / 10);
    const seeded = [
      ...(await seedSecrets(world.db, keks.v1, 'v1', options.tenants - nameBound, 'v1')),
      ...(await seedSecrets(world.db, keks.v1, 'v1', nameBound, 'name')),
    ];
    const during = new TalosGateway(world.db, keks, 'v2', seeded, seeded);
    gateways.push(during);
    during.start({ create: true });
    return await rotateUnderFaults(world, options, {
      request: { target: 'talos', from: 'v1', to: 'v2', ...SLICES },
      leftSql: `SELECT count(*) AS n FROM public.secrets WHERE key_id = 'v1'`,
      total: seeded.length,
      retire: {
        // The operator removes TALOS_KEK_v1 and restarts the gateways: they hold v2 alone, and keep working.
        before: async () => {
          await during.stop();
          const after = new TalosGateway(world.db, { v2: keks.v2 }, 'v2', [...seeded, ...during.created], seeded);
          gateways.push(after);
          after.start({ create: true });
        },
        note: "chaos: TALOS_KEK_v1 removed from every gateway's environment",
      },
      check: async () => {
        for (const gateway of gateways) await gateway.stop();
        const notes: string[] = [];
        const created = gateways.flatMap((g) => g.created);
        const problems = await checkSecrets(world.db, keks.v2, 'v2', [...seeded, ...created]);
        // Nothing at all (tracked or not) is left on v1.
        const onOld = await world.count(`SELECT count(*) AS n FROM public.secrets WHERE key_id <> 'v2'`);
        if (onOld > 0) notes.push(`${onOld} secret(s) not on v2`);
        const errors = gateways.flatMap((g) => g.errors);
        const unreadable = errors.filter((e) => !CONNECTION_LOST.test(e));
        if (unreadable.length > 0)
          notes.push(`the gateway could not read ${unreadable.length} time(s): ${unreadable[0]}`);
        if (problems.length > 0) notes.push(`${problems.length} problem(s), e.g. ${problems[0]}`);
        const registry = new KekRegistry(world.db, 'talos');
        const [old, current] = [(await registry.get('v1'))?.state, (await registry.get('v2'))?.state];
        if (old !== 'retired' || current !== 'active') notes.push(`v1 is ${old}, v2 ${current}`);
        if (errors.length > unreadable.length)
          notes.push(`${errors.length - unreadable.length} gateway queries lost to the restart, retried`);
        const reads = gateways.reduce((sum, g) => sum + g.reads, 0);
        const writes = gateways.reduce((sum, g) => sum + g.writes, 0);
        return {
          checked: seeded.length + created.length,
          losses: problems.length + onOld + unreadable.length + (old === 'retired' && current === 'active' ? 0 : 1),
          notes,
          live: `the gateway live: ${reads} reads, ${writes} secrets updated, ${created.length} created`,
        };
      },
    });
  } finally {
    for (const gateway of gateways) await gateway.stop();
    await world.stop();
  }
}

/** The stored form of a KMS-held DEK as the README documents it: format byte 0x02, then KMS's ciphertext blob. */
const KMS_FORMAT_BYTE = 0x02;
/** The encryption context rekey's documented format binds a KMS-held DEK to. */
const kmsContext = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });
/** The KMS-held keyspace rekey rotates here: fewer rows than the others, each a call to moto (one Python process). */
export const KMS_SHARE = 5;
/**
 * How long every third KMS call is throttled mid-run. Not the whole run: the SDK's retry quota (AWS_MAX_ATTEMPTS'
 * standard strategy) is spent by sustained throttling of a third of the calls, and then every slice fails on its
 * first throttled call and Temporal's retry alone carries it (see the README, Chaos).
 */
const THROTTLED_MS = 10_000;

/**
 * A KMS-held keyspace (rekey's own table, REKEY_KEY_PROVIDER=aws-kms) on a moto server: the DEKs are made by the
 * fixture with the SDK's GenerateDataKey alone, under the KEK v1 rekey provisioned. The worker reaches KMS through a
 * proxy that, mid-run, throttles every third call for 10 s and then resets every connection for 3 s or more, until
 * it has turned the worker away at least once (moto keeps its keys in
 * memory, so the endpoint's outage stands in for a restart of KMS: a moto process restarted has no keys). The
 * application (rekey's TenantCrypto, its own process's client straight to moto) rewrites DEKs and onboards tenants
 * throughout. The verdict is KMS's own Decrypt, called by the fixture: every row opens under v2's key, to the DEK it
 * held; v1's key is disabled (not scheduled for deletion) and retired in the registry.
 */
export async function kmsScenario(options: TargetScenarioOptions): Promise<TargetVerdict> {
  const tenants = Math.max(100, Math.floor(options.tenants / KMS_SHARE));
  const moto = await startMoto(readToolchain().motoServer);
  const proxy = await throttlingProxy(moto.endpoint, 0);
  const prefix = `alias/rekey-chaos/${randomUUID()}/`;
  const settings = { ...moto.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix };
  const world = new TargetWorld({
    ...settings,
    AWS_ENDPOINT_URL: proxy.endpoint,
    REKEY_KEY_PROVIDER: 'aws-kms',
    REKEY_TARGETS: BUILTIN_TARGET,
  });
  const kms = new KMSClient({
    endpoint: moto.endpoint,
    region: moto.env.AWS_REGION!,
    credentials: { accessKeyId: moto.env.AWS_ACCESS_KEY_ID!, secretAccessKey: moto.env.AWS_SECRET_ACCESS_KEY! },
  });
  const keyOf = async (alias: string) => (await kms.send(new DescribeKeyCommand({ KeyId: alias }))).KeyMetadata!;
  const provisioner = KmsKeys.fromEnv(settings);
  const appKeys = KmsKeys.fromEnv(settings);
  let app: TenantCrypto | undefined;
  let writer: ReturnType<typeof startLiveWriter> | undefined;
  try {
    await world.start(() => Promise.resolve()); // rekey's own table: its migrations alone
    await generateKek(provisioner, 'v1');
    await new KekRegistry(world.db, BUILTIN_TARGET).seedActive('v1', (await storedKek(provisioner, 'v1')).fingerprint);
    const v1 = await keyOf(`${prefix}kek-v1`);
    const ids = Array.from({ length: tenants }, (_, i) => `tenant-${String(i).padStart(6, '0')}`);
    const deks = new Map<string, Buffer>();
    for (let i = 0; i < ids.length; i += 25) {
      const chunk = ids.slice(i, i + 25);
      const made = await Promise.all(
        chunk.map((id) =>
          kms.send(
            new GenerateDataKeyCommand({ KeyId: v1.Arn, KeySpec: 'AES_256', EncryptionContext: kmsContext(id, 'v1') }),
          ),
        ),
      );
      made.forEach((m, j) => deks.set(chunk[j]!, Buffer.from(m.Plaintext!)));
      await world.db.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
        [chunk, made.map((m) => Buffer.concat([Buffer.from([KMS_FORMAT_BYTE]), m.CiphertextBlob!]))],
      );
    }
    await appKeys.reload();
    app = new TenantCrypto({ db: world.db, keys: appKeys, registryTtlMs: 300, instanceId: 'chaos-kms-app' });
    await app.start();
    // Steady, not flat out (moto is one Python process on the machine's few cores, shared with the worker), and on a
    // tenth of the tenants: the rest is the worker's to move.
    const written = ids.slice(0, Math.ceil(ids.length / 10));
    writer = startLiveWriter(app, (n) => written[(n * 7) % written.length]!, { pauseMs: 20 });
    const live = writer;
    return await rotateUnderFaults(world, options, {
      request: { from: 'v1', to: 'new', ...SLICES, fleetLiveWithin: '1h' },
      leftSql: `SELECT count(*) AS n FROM rekey.tenant_deks WHERE kek_id = 'v1'`,
      total: tenants,
      midway: async () => {
        proxy.throttleEvery = 3;
        await sleep(THROTTLED_MS);
        proxy.throttleEvery = 0;
        const started = Date.now();
        await proxy.outage(3_000, true);
        const seconds = Math.round((Date.now() - started) / 1000);
        return `every 3rd KMS call throttled for ${THROTTLED_MS / 1000} s (${proxy.throttled} calls), then KMS unreachable for ${seconds} s (${proxy.refused} request(s) reset)`;
      },
      check: async () => {
        await live.stop();
        const notes: string[] = [];
        // KMS's own Decrypt, called here: every row is v2's, opens under v2's key and context, to the DEK it held.
        const v2 = await keyOf(`${prefix}kek-v2`);
        const { rows } = await world.db.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
          'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks',
        );
        const problems: string[] = [];
        for (let i = 0; i < rows.length; i += 25) {
          await Promise.all(
            rows.slice(i, i + 25).map(async (row) => {
              if (row.kek_id !== 'v2') return problems.push(`${row.tenant_id}: on ${row.kek_id}`);
              if (row.wrapped_dek[0] !== KMS_FORMAT_BYTE) return problems.push(`${row.tenant_id}: not KMS's format`);
              try {
                const opened = await kms.send(
                  new DecryptCommand({
                    CiphertextBlob: row.wrapped_dek.subarray(1),
                    EncryptionContext: kmsContext(row.tenant_id, 'v2'),
                  }),
                );
                if (opened.KeyId !== v2.Arn) problems.push(`${row.tenant_id}: under ${opened.KeyId}, not v2's key`);
                const dek = deks.get(row.tenant_id);
                if (dek && !dek.equals(Buffer.from(opened.Plaintext!))) problems.push(`${row.tenant_id}: DEK changed`);
              } catch (err) {
                problems.push(`${row.tenant_id}: ${(err as Error).message}`);
              }
              return undefined;
            }),
          );
        }
        const missing = ids.filter((id) => !rows.some((r) => r.tenant_id === id)).length;
        if (missing > 0) problems.push(`${missing} tenant(s) gone`);
        // What the application wrote during the run reads back through a fresh application.
        const reader = new TenantCrypto({ db: world.db, keys: appKeys, instanceId: 'chaos-kms-reader' });
        await reader.start();
        for (const [tenantId, ciphertext] of live.written) {
          try {
            if ((await reader.decrypt(tenantId, ciphertext)).toString() !== 'fresh')
              problems.push(`${tenantId}: reads other data`);
          } catch (err) {
            problems.push(`${tenantId}: ${(err as Error).message}`);
          }
        }
        await reader.stop();
        if (problems.length > 0) notes.push(`${problems.length} problem(s), e.g. ${problems[0]}`);
        const registry = new KekRegistry(world.db, BUILTIN_TARGET);
        const [old, current] = [(await registry.get('v1'))?.state, (await registry.get('v2'))?.state];
        const [oldKey, newKey] = [(await keyOf(v1.Arn!)).KeyState, v2.KeyState];
        const lifecycle = old === 'retired' && current === 'active' && oldKey === 'Disabled' && newKey === 'Enabled';
        if (!lifecycle) notes.push(`v1 is ${old} (its key ${oldKey}), v2 ${current} (its key ${newKey})`);
        return {
          checked: rows.length,
          losses: problems.length + (lifecycle ? 0 : 1),
          notes,
          live: `the application live: ${live.writes} DEK rewrites, ${live.written.size} new tenants`,
        };
      },
    });
  } finally {
    await writer?.stop().catch(() => undefined);
    await app?.stop();
    await world.stop();
    appKeys.close();
    provisioner.close();
    kms.destroy();
    await proxy.close();
    await moto.stop();
  }
}
