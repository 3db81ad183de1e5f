import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { randomUUID } from 'node:crypto';
import type { WorkflowHandle } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { createActivities, type Activities } from '../../src/activities';
import { dekFingerprints, seedTenants, tenantIdFor } from '../../src/dev/tenants';
import type { EnvKeyProvider } from '../../src/keyring/drivers/env';
import { AppInstances } from '../../src/store/app-instances';
import { KekRegistry } from '../../src/store/kek-registry';
import { TenantDekStore } from '../../src/store/tenant-deks';
import { TenantCrypto } from '../../src/tenant-crypto';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { rotateKek, type RotationReport } from '../../src/workflows';
import { workflowIdFor } from '../../src/client/rotations';
import { createTestDatabase, type TestDatabase } from './database';
import { keyspaceIn } from './keyspace';
import { createTestKeys } from './keys';
import { resultWithin, workflowBundle } from './temporal';
import { fingerprintIn } from './store-keys';

/** A fresh database with `v1` active, tenants on it, some tenant data, and `v2` in the key provider only. */
/** Small batches and short slice parts: a rotation of a few thousand rows that takes seconds, to stop midway. */
export const SLOW_ROTATION = {
  from: 'v1',
  to: 'v2',
  batchSize: 20,
  parallelism: 1,
  sliceTimeBudget: '150ms',
  gracePeriod: '1s',
} satisfies RotationRequest;

export class RotationFixture {
  readonly taskQueue = `rotation-${randomUUID()}`;
  readonly ciphertexts = new Map<string, { plaintext: string; ciphertext: string }>();
  before = new Map<string, string>();

  private constructor(
    readonly db: TestDatabase,
    readonly keys: EnvKeyProvider,
    readonly secrets: string[],
    /** The keys as a worker process reads them from its environment. */
    readonly keyEnv: Record<string, string>,
  ) {}

  static async create(options: { tenants: number; dataTenants?: number }): Promise<RotationFixture> {
    const db = await createTestDatabase();
    const { provider, secrets, env } = createTestKeys(['v1', 'v2', 'v3'], 'v1');
    const fixture = new RotationFixture(db, provider, secrets, env);
    await new KekRegistry(db.pool, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(provider, 'v1'));
    await seedTenants({ db: db.pool, keys: provider, kekId: 'v1', count: options.tenants });
    const app = new TenantCrypto({ db: db.pool, keys: provider });
    await app.start();
    for (let i = 0; i < (options.dataTenants ?? 10); i++) {
      const tenantId = tenantIdFor('tenant-', i * Math.max(1, Math.floor(options.tenants / 10)));
      const plaintext = `secret of ${tenantId}`;
      fixture.ciphertexts.set(tenantId, { plaintext, ciphertext: await app.encrypt(tenantId, plaintext) });
    }
    await app.stop();
    fixture.before = await dekFingerprints(db.pool, provider);
    return fixture;
  }

  activities(): Activities {
    return createActivities({ db: this.db.pool, keys: this.keys });
  }

  worker(env: TestWorkflowEnvironment, activities: object = this.activities()): Promise<Worker> {
    return Worker.create({
      connection: env.nativeConnection,
      taskQueue: this.taskQueue,
      workflowBundle: workflowBundle(),
      activities,
    });
  }

  /**
   * Starts one rotation under its keyspace's workflow id, with a fresh worker running while `steer` works the run (its
   * queries, signals and updates); returns what `steer` returns.
   */
  async drive<T>(
    env: TestWorkflowEnvironment,
    request: RotationRequest,
    steer: (handle: WorkflowHandle<typeof rotateKek>) => Promise<T>,
    activities?: object,
  ): Promise<T> {
    const worker = await this.worker(env, activities);
    return worker.runUntil(async () => {
      const handle = await env.client.workflow.start(rotateKek, {
        taskQueue: this.taskQueue,
        workflowId: workflowIdFor(request, await keyspaceIn(this.db.pool)),
        args: [request],
      });
      return steer(handle);
    });
  }

  /** Runs one rotation to its end on a fresh worker; returns its report (or rejects with its failure). */
  execute(env: TestWorkflowEnvironment, request: RotationRequest, activities?: object): Promise<RotationReport> {
    return this.drive(env, request, (handle) => resultWithin<RotationReport>(handle), activities);
  }

  /** A live application instance that can unwrap `v1` only: the fleet gates wait for it until it is overridden. */
  async announceOldInstance(instanceId: string): Promise<void> {
    await new AppInstances(this.db.pool, BUILTIN_TARGET).announce({
      instanceId,
      unwrapKekIds: ['v1'],
      wrapKekId: 'v1',
      kekFingerprints: {},
    });
  }

  async staleOn(kekId: string): Promise<number> {
    return new TenantDekStore(this.db.pool).countOnKek(kekId);
  }

  async kekState(kekId: string): Promise<string | undefined> {
    return (await new KekRegistry(this.db.pool, BUILTIN_TARGET).get(kekId))?.state;
  }

  /** Every DEK unwraps, byte-identical to before (tenants created since are ignored), and the data decrypts. */
  async expectNothingLost(): Promise<void> {
    const after = await dekFingerprints(this.db.pool, this.keys);
    for (const [tenantId, fingerprint] of this.before) {
      if (after.get(tenantId) !== fingerprint) throw new Error(`DEK of ${tenantId} changed or vanished`);
    }
    const app = new TenantCrypto({ db: this.db.pool, keys: this.keys });
    await app.start();
    try {
      for (const [tenantId, { plaintext, ciphertext }] of this.ciphertexts) {
        const decrypted = (await app.decrypt(tenantId, ciphertext)).toString();
        if (decrypted !== plaintext) throw new Error(`data of ${tenantId} decrypts to something else`);
      }
    } finally {
      await app.stop();
    }
  }

  async drop(): Promise<void> {
    this.keys.close();
    await this.db.drop();
  }
}
