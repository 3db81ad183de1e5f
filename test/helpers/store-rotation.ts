// What the tests of each key store (AWS Secrets Manager, Vault KV v2, Vault Transit) do alike: a keyspace of their own
// over a fresh store, a full rotation while an application writes, and the destruction after the restore window.
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Pool } from 'pg';
import { expect } from 'vitest';
import { createActivities, type Activities } from '../../src/activities';
import { dekFingerprints, seedTenants } from '../../src/dev/tenants';
import { KekRestoreRefusedError } from '../../src/errors';
import type { StoreDriver } from '../../src/keyring/driver';
import type { RotationRequest } from '../../src/rotation/rotation-input';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { restoreKek } from '../../src/targets/restore-kek';
import { TargetRuntimes } from '../../src/targets/runtime';
import { TenantCrypto } from '../../src/tenant-crypto';
import { startLiveWriter } from './live-writer';
import { runRotation } from './rotation-run';
import { fingerprintIn } from './store-keys';
import { generateKek } from '../../src/keyring/keyring';

/**
 * A keyspace of its own in the file's shared database: `keys` (a store of its own, empty) makes v1, and rekey's own
 * tables start again with v1 active in the registry.
 */
export async function freshKeyspace(db: Pool, keys: StoreDriver): Promise<void> {
  await generateKek(keys, 'v1');
  await db.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
  await new KekRegistry(db, BUILTIN_TARGET).seedActive('v1', await fingerprintIn(keys, 'v1'));
}

/** `freshKeyspace` with `tenants` tenants wrapped by v1; returns each tenant's DEK fingerprint before anything moves. */
export async function seededKeyspace(db: Pool, keys: StoreDriver, tenants: number): Promise<Map<string, string>> {
  await freshKeyspace(db, keys);
  await seedTenants({ db, keys, kekId: 'v1', count: tenants });
  return dekFingerprints(db, keys);
}

/** The message of a rotation's failure: the workflow's, which carries the failed step's. */
export function failureOf(err: unknown): string {
  const cause = (err as { cause?: { message?: string } }).cause;
  return cause?.message ?? String(err);
}

/**
 * A rotation v1 → new (a day's grace) that the store refuses: the message of its failure. `timeoutMs` bounds a run
 * whose step retries first (an unreachable store).
 */
export async function refusalOf(
  servers: { env: TestWorkflowEnvironment; db: Pool },
  keys: StoreDriver,
  timeoutMs?: number,
): Promise<string> {
  const { env, db } = servers;
  const request: RotationRequest = { from: 'v1', to: 'new', gracePeriod: '1d', fleetLiveWithin: '1h' };
  const failed = await runRotation(
    env,
    createActivities({ db, keys }),
    db,
    request,
    timeoutMs === undefined ? {} : { timeoutMs },
  ).catch((err: unknown) => err);
  return failureOf(failed);
}

/** What a rotation under a live writer leaves for the test to check: the report, the writer, the running application. */
export interface RotatedUnderWriter {
  report: Awaited<ReturnType<typeof runRotation>>['report'];
  writer: ReturnType<typeof startLiveWriter>;
  app: TenantCrypto;
}

/**
 * A full rotation v1 → new (batches of `batchSize`, 100 by default; a day's grace) by a worker on `keys`, while an
 * application with keys of its own (`appKeys`, another process's view of the same store) rewrites the DEKs of tenants
 * `tenantAt(n)` and encrypts new ones. The rotation completes and the application wrote during it; `then` checks the
 * rest while the application still runs, and the application stops after it, whatever happens.
 */
export async function rotateUnderLiveWriter(
  servers: { env: TestWorkflowEnvironment; db: Pool },
  stores: { keys: StoreDriver; appKeys: StoreDriver },
  options: { tenantAt: (n: number) => string; batchSize?: number; pauseMs?: number; timeoutMs: number },
  then: (rotated: RotatedUnderWriter) => Promise<void>,
): Promise<void> {
  const { env, db } = servers;
  const app = new TenantCrypto({ db, keys: stores.appKeys, registryTtlMs: 100 });
  await app.start();
  const writer = startLiveWriter(
    app,
    options.tenantAt,
    options.pauseMs === undefined ? {} : { pauseMs: options.pauseMs },
  );
  try {
    const request: RotationRequest = {
      from: 'v1',
      to: 'new',
      batchSize: options.batchSize ?? 100,
      gracePeriod: '1d',
      fleetLiveWithin: '1h',
    };
    const activities: Activities = createActivities({ db, keys: stores.keys });
    const { report } = await runRotation(env, activities, db, request, { timeoutMs: options.timeoutMs });
    await writer.stop();
    expect(report.outcome).toBe('completed');
    expect(writer.writes).toBeGreaterThan(0);
    await then({ report, writer, app });
  } finally {
    await writer.stop();
    await app.stop();
  }
}

/**
 * A rotation v1 → new with a restore window of nothing, and the destruction of v1 that its retirement schedules: the
 * destruction reports `detail`, `inStore` checks what the store shows, the registry says destroyed, and a restore of
 * v1 is refused.
 */
export async function destroyedAfterWindow(
  servers: { env: TestWorkflowEnvironment; db: Pool },
  keys: StoreDriver,
  options: { detail: RegExp; timeoutMs?: number },
  inStore: () => Promise<void>,
): Promise<void> {
  const { env, db } = servers;
  const { destroyed: report } = await runRotation(
    env,
    createActivities({ db, keys }),
    db,
    {
      from: 'v1',
      to: 'new',
      gracePeriod: '1d',
      fleetLiveWithin: '1h',
      restoreWindow: '0s',
      allowShortRestoreWindow: 'test: destroy at once',
    },
    { ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }), destroyKek: 'v1' },
  );
  expect(report?.outcome).toBe('destroyed');
  expect(report?.detail).toMatch(options.detail);
  await inStore();
  expect((await new KekRegistry(db, BUILTIN_TARGET).get('v1'))?.state).toBe('destroyed');
  const runtime = await new TargetRuntimes({ db, keys }).get();
  await expect(restoreKek(runtime, 'v1', 'too late', 'bob')).rejects.toThrow(KekRestoreRefusedError);
}
