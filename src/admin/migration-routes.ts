// The admin API of `rekey migrate-dek`: start a migration, read its report, pause, resume or abort it. The same
// client functions as the CLI's (src/client/migrations.ts), so both surfaces start the same one-per-target workflow.
import type { Client } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';
import {
  errorBody,
  failureFields,
  failureProperties,
  opIdParams,
  retryingBody,
  runStatusBody,
  runStatusFields,
} from './schemas';
import { migrationStatus, runningMigration, startMigration, type MigrationStatus } from '../client/migrations';
import type { KeyspaceLookup } from '../client/rotations';
import type { Keyspace } from '../rotation/identity';
import type { MigrationReport, MigrationRequest } from '../workflows';
import { abortMigrationUpdate, pauseMigrationUpdate, resumeMigrationUpdate } from '../workflows/messages';

/** The workflow's report as it is (MigrationReport in src/workflows/migrate-dek.ts): passed through whole. */
const migrationStatusBody = {
  type: 'object',
  properties: {
    op_id: { type: 'string' },
    execution_status: { type: 'string', description: 'Temporal execution status: RUNNING, COMPLETED, FAILED, ...' },
    started_at: { type: 'string', nullable: true },
    completed_at: { type: 'string', nullable: true },
    report: { type: 'object', additionalProperties: true, description: 'phase, outcome, per-field counters, totals' },
    failure: { type: 'string' },
    ...failureProperties,
    run_status: runStatusBody,
    retrying: retryingBody,
  },
  required: ['op_id', 'execution_status', 'run_status'],
} as const;

function toBody(s: MigrationStatus) {
  return {
    op_id: s.workflowId,
    execution_status: s.status,
    started_at: s.startedAt?.toISOString() ?? null,
    completed_at: s.closedAt?.toISOString() ?? null,
    ...(s.report && { report: s.report }),
    ...(s.failure !== undefined && { failure: s.failure }),
    ...failureFields(s),
    ...runStatusFields(s.run),
  };
}

interface StartBody {
  target?: string;
  tenant_id?: string;
  kek_version?: string;
  dry_run?: boolean;
  batch_size?: number;
  parallelism?: number;
}

export function registerMigrationRoutes(
  app: FastifyInstance,
  options: {
    client: Client;
    taskQueue: string;
    defaultTarget: string;
    /** A target's keyspace in this API's database: what a migration started here runs in. */
    keyspace: (target: string) => Promise<Keyspace>;
    keyspaceOf: KeyspaceLookup;
  },
): void {
  const { client, taskQueue, keyspaceOf } = options;

  app.post<{ Body: StartBody | undefined }>(
    '/admin/v1/migrations/migrate-dek',
    {
      schema: {
        summary: "Start moving a target's legacy values (encrypted directly by the KEK) under the tenants' DEKs",
        description:
          "As `rekey migrate-dek`: provisions missing DEKs under the current KEK, then re-encrypts every legacy value under the DEK the application reads it with. The answer comes once the migration's plan step has decided: 202 with the KEK new DEKs are wrapped with and the legacy values it found; a refusal with the status of its kind (400 a target with no fields or no current KEK known, 409 a rotation of the target under way), and nothing was written. At most one migration runs per target: a second request answers 409 with the running op_id. A dry run writes nothing and gets an op_id of its own.",
        body: {
          type: 'object',
          nullable: true,
          additionalProperties: false,
          properties: {
            target: { type: 'string', minLength: 1, maxLength: 63 },
            tenant_id: { type: 'string', minLength: 1, maxLength: 128 },
            kek_version: { type: 'string', minLength: 1, maxLength: 64 },
            dry_run: { type: 'boolean' },
            batch_size: { type: 'integer', minimum: 1, maximum: 50000 },
            parallelism: { type: 'integer', minimum: 1, maximum: 64 },
          },
        },
        response: {
          202: {
            type: 'object',
            properties: {
              op_id: { type: 'string' },
              status_url: { type: 'string' },
              message: { type: 'string' },
              kek_id: { type: 'string', description: 'the KEK new DEKs are wrapped with' },
              legacy_values: { type: 'integer', description: 'legacy values the plan found' },
            },
            required: ['op_id', 'status_url'],
          },
          400: errorBody,
          401: errorBody,
          404: errorBody,
          409: errorBody,
          422: errorBody,
          500: errorBody,
          503: errorBody,
        },
      },
    },
    async (request, reply) => {
      const body = request.body ?? {};
      const target = body.target ?? options.defaultTarget;
      const migration: MigrationRequest = {
        target,
        ...(body.tenant_id !== undefined && { tenantId: body.tenant_id }),
        ...(body.kek_version !== undefined && { kekVersion: body.kek_version }),
        ...(body.dry_run !== undefined && { dryRun: body.dry_run }),
        ...(body.batch_size !== undefined && { batchSize: body.batch_size }),
        ...(body.parallelism !== undefined && { parallelism: body.parallelism }),
      };
      const started = await startMigration(client, migration, { taskQueue, keyspace: await options.keyspace(target) });
      const opId = started.handle.workflowId;
      if (started.kind === 'already-running') {
        return reply.status(409).send({
          error: 'MIGRATION_ALREADY_RUNNING',
          message: `a migration of target '${target}' is already running: ${opId}`,
          op_id: opId,
        });
      }
      const { planned } = started;
      return reply.status(202).send({
        op_id: opId,
        status_url: `/admin/v1/migrations/${encodeURIComponent(opId)}`,
        message:
          `${migration.dryRun ? 'dry run of the migration' : 'migration'} of target '${target}' started` +
          (started.unanswered !== undefined ? `; not validated yet: ${started.unanswered}` : ''),
        ...(planned?.kekId !== undefined && { kek_id: planned.kekId }),
        ...(planned && { legacy_values: planned.fields.reduce((sum, field) => sum + field.legacyAtStart, 0) }),
      });
    },
  );

  app.get<{ Params: { op_id: string } }>(
    '/admin/v1/migrations/:op_id',
    {
      schema: {
        summary: "A migration's report: running (its progress) or ended (its result)",
        params: opIdParams,
        response: { 200: migrationStatusBody, 401: errorBody, 404: errorBody },
      },
    },
    async (request) => toBody(await migrationStatus(client, request.params.op_id, keyspaceOf)),
  );

  for (const action of ['pause', 'resume', 'abort'] as const) {
    app.post<{ Params: { op_id: string } }>(
      `/admin/v1/migrations/:op_id/${action}`,
      {
        schema: {
          summary: `${action[0]!.toUpperCase()}${action.slice(1)} a migration`,
          params: opIdParams,
          response: { 200: migrationStatusBody, 401: errorBody, 404: errorBody, 409: errorBody },
        },
      },
      async (request) => {
        const handle = await runningMigration(client, request.params.op_id, keyspaceOf);
        let report: MigrationReport;
        if (action === 'abort') {
          await handle.executeUpdate(abortMigrationUpdate, { args: ['admin API'] });
          report = await handle.result();
        } else {
          report = await handle.executeUpdate(action === 'pause' ? pauseMigrationUpdate : resumeMigrationUpdate);
        }
        return { ...toBody(await migrationStatus(client, request.params.op_id, keyspaceOf)), report };
      },
    );
  }
}
