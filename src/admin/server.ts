import { BUILTIN_TARGET } from '../targets/builtin';
import { createHash, timingSafeEqual } from 'node:crypto';
import swagger from '@fastify/swagger';
import type { Client } from '@temporalio/client';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Pool } from 'pg';
import {
  rotationStatus,
  RotationNotFoundError,
  RotationNotRunningError,
  runningRotation,
  startRotation,
  type StartOutcome,
} from '../client/rotations';
import { InvalidRotationError, type RotationRequest } from '../rotation/rotation-input';
import type { ProgressReport } from '../rotation/progress';
import { KekRegistry } from '../store/kek-registry';
import { TenantDekStore } from '../store/tenant-deks';
import { abortUpdate, pauseUpdate, resumeUpdate } from '../workflows';

export interface AdminServerOptions {
  client: Client;
  db: Pool;
  taskQueue: string;
  /** Bearer token every request must carry (compared in constant time). */
  token: string;
  /** The KEK the deployment's configuration names as current: `rotate-all` rotates to it when it is not active yet. */
  configuredCurrentKekId?: string;
  logger?: boolean;
}

const errorBody = {
  type: 'object',
  properties: { error: { type: 'string' }, message: { type: 'string' } },
  required: ['error', 'message'],
} as const;

const counters = {
  type: 'object',
  properties: Object.fromEntries(
    ['rewrapped', 'alreadyOnTarget', 'skipped', 'casConflicts', 'contended', 'failed'].map((k) => [
      k,
      { type: 'integer' },
    ]),
  ),
} as const;

const rotationStatusBody = {
  type: 'object',
  properties: {
    op_id: { type: 'string' },
    status: { type: 'string', description: 'Temporal execution status: RUNNING, COMPLETED, FAILED, TERMINATED, ...' },
    phase: { type: 'string' },
    outcome: { type: 'string' },
    from: { type: 'string' },
    to: { type: 'string' },
    percent: { type: 'number' },
    paused: { type: 'boolean' },
    passes: { type: 'integer' },
    stale_at_start: { type: 'integer' },
    rate_per_second: { type: 'number' },
    eta_seconds: { type: 'number' },
    counters,
    failed_tenants: {
      type: 'array',
      items: { type: 'object', properties: { tenantId: { type: 'string' }, reason: { type: 'string' } } },
    },
    note: { type: 'string' },
    failure: { type: 'string' },
  },
  required: ['op_id', 'status'],
} as const;

const opIdParams = {
  type: 'object',
  properties: { op_id: { type: 'string', minLength: 1, maxLength: 200 } },
  required: ['op_id'],
} as const;

function toStatusBody(opId: string, status: string, progress?: ProgressReport, failure?: string) {
  return {
    op_id: opId,
    status,
    ...(progress && {
      phase: progress.phase,
      outcome: progress.outcome,
      from: progress.from,
      to: progress.to,
      percent: progress.percent,
      paused: progress.paused,
      passes: progress.passes,
      stale_at_start: progress.staleAtStart,
      rate_per_second: progress.ratePerSecond,
      eta_seconds: progress.etaSeconds,
      counters: progress.counters,
      failed_tenants: progress.failedTenants,
      note: progress.note,
    }),
    ...(failure !== undefined && { failure }),
  };
}

function sameToken(given: string, expected: string): boolean {
  // Hash both sides first: equal lengths for timingSafeEqual, and no early exit on a length mismatch.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The admin API of the gateway runbook, on rekey: rotate-all, rotation-status, kek-status, and controls. */
export async function buildAdminServer(options: AdminServerOptions): Promise<FastifyInstance> {
  const { client, db, taskQueue, token } = options;
  // Unknown fields are refused (400), not silently dropped: a typo in a rotation request must not go unnoticed.
  const app = Fastify({ logger: options.logger ?? false, ajv: { customOptions: { removeAdditional: false } } });
  await app.register(swagger, {
    openapi: {
      info: {
        title: 'rekey admin API',
        version: '1.0.0',
        description: 'KEK rotation, as a drop-in for the gateway runbook',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.setErrorHandler((error: Error & { statusCode?: number; validation?: unknown }, _request, reply) => {
    const status = error.statusCode ?? 500;
    if (status >= 500) app.log.error(error);
    void reply.status(status).send({
      error: status === 400 ? 'bad_request' : status >= 500 ? 'internal' : 'error',
      message: status >= 500 ? 'internal error' : error.message,
    });
  });

  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    if (request.url === '/admin/v1/openapi.json' || request.url === '/healthz') return;
    const header = request.headers.authorization ?? '';
    const match = /^Bearer (.+)$/.exec(header);
    if (!match || !sameToken(match[1]!, token)) {
      await reply
        .status(401)
        .header('www-authenticate', 'Bearer')
        .send({ error: 'unauthorized', message: 'a valid bearer token is required' });
    }
  });

  app.get('/healthz', { schema: { hide: true } }, () => ({ ok: true }));
  app.get('/admin/v1/openapi.json', { schema: { hide: true } }, () => app.swagger());

  app.post<{
    Body:
      | {
          from?: string;
          to?: string;
          dry_run?: boolean;
          batch_size?: number;
          parallelism?: number;
          grace_period?: string;
          tenant_id?: string;
        }
      | undefined;
  }>(
    '/admin/v1/secrets/rotate-all',
    {
      schema: {
        summary: 'Start re-wrapping every DEK under a new KEK',
        description:
          "Rotates from the active KEK (default 'current') to `to`: by default the KEK the configuration names as current when it is not active yet (as after the runbook's step 2), else a newly generated one.",
        body: {
          type: 'object',
          nullable: true,
          additionalProperties: false,
          properties: {
            from: { type: 'string', minLength: 1, maxLength: 64 },
            to: { type: 'string', minLength: 1, maxLength: 64 },
            dry_run: { type: 'boolean' },
            batch_size: { type: 'integer', minimum: 1, maximum: 50000 },
            parallelism: { type: 'integer', minimum: 1, maximum: 64 },
            grace_period: { type: 'string', minLength: 1 },
            tenant_id: { type: 'string', minLength: 1 },
          },
        },
        response: {
          202: {
            type: 'object',
            properties: { op_id: { type: 'string' }, status_url: { type: 'string' } },
            required: ['op_id', 'status_url'],
          },
          200: {
            type: 'object',
            properties: {
              op_id: { type: 'string' },
              status_url: { type: 'string' },
              already_done: { type: 'boolean' },
            },
          },
          400: errorBody,
          401: errorBody,
          409: { type: 'object', properties: { ...errorBody.properties, op_id: { type: 'string' } } },
        },
      },
    },
    async (request, reply) => {
      const body = request.body ?? {};
      const active = (await new KekRegistry(db, BUILTIN_TARGET).active())?.kekId;
      const from = body.from === undefined || body.from === 'current' ? active : body.from;
      if (from === undefined) {
        return reply
          .status(409)
          .send({ error: 'conflict', message: 'the KEK registry has no active KEK to rotate from' });
      }
      const configured = options.configuredCurrentKekId;
      const to = body.to ?? (configured && configured !== from ? configured : 'new');
      const rotation: RotationRequest = {
        from,
        to,
        dryRun: body.dry_run,
        batchSize: body.batch_size,
        parallelism: body.parallelism,
        gracePeriod: body.grace_period,
        tenantId: body.tenant_id,
      };
      let started: StartOutcome;
      try {
        started = await startRotation(client, rotation, { taskQueue });
      } catch (err) {
        if (err instanceof InvalidRotationError)
          return reply.status(400).send({ error: 'bad_request', message: err.message });
        throw err;
      }
      const opId = started.handle.workflowId;
      const statusUrl = `/admin/v1/secrets/rotation-status/${encodeURIComponent(opId)}`;
      if (started.kind === 'already-running') {
        return reply
          .status(409)
          .send({ error: 'conflict', message: `rotation ${opId} is already running`, op_id: opId });
      }
      if (started.kind === 'already-done')
        return reply.status(200).send({ op_id: opId, status_url: statusUrl, already_done: true });
      return reply.status(202).send({ op_id: opId, status_url: statusUrl });
    },
  );

  app.get<{ Params: { op_id: string } }>(
    '/admin/v1/secrets/rotation-status/:op_id',
    {
      schema: {
        summary: 'Progress of one rotation',
        params: opIdParams,
        response: { 200: rotationStatusBody, 401: errorBody, 404: errorBody },
      },
    },
    async (request, reply) => {
      try {
        const status = await rotationStatus(client, request.params.op_id);
        return toStatusBody(request.params.op_id, status.status, status.progress, status.failure);
      } catch (err) {
        if (err instanceof RotationNotFoundError)
          return reply.status(404).send({ error: 'not_found', message: err.message });
        throw err;
      }
    },
  );

  app.get(
    '/admin/v1/secrets/kek-status',
    {
      schema: {
        summary: 'The current KEK and DEK counts per KEK id',
        response: {
          200: {
            type: 'object',
            properties: {
              current_kek_id: { type: 'string', nullable: true },
              stale_counts: { type: 'object', additionalProperties: { type: 'integer' } },
              dek_counts: { type: 'object', additionalProperties: { type: 'integer' } },
            },
          },
          401: errorBody,
        },
      },
    },
    async () => {
      const status = await new TenantDekStore(db).kekStatus();
      return { current_kek_id: status.currentKekId, stale_counts: status.staleCounts, dek_counts: status.dekCounts };
    },
  );

  for (const [action, definition] of [
    ['pause', pauseUpdate],
    ['resume', resumeUpdate],
    ['abort', abortUpdate],
  ] as const) {
    app.post<{ Params: { op_id: string } }>(
      `/admin/v1/secrets/rotation/:op_id/${action}`,
      {
        schema: {
          summary: `${action[0]!.toUpperCase()}${action.slice(1)} a rotation`,
          params: opIdParams,
          response: { 200: rotationStatusBody, 401: errorBody, 404: errorBody, 409: errorBody },
        },
      },
      async (request, reply) => {
        let handle: Awaited<ReturnType<typeof runningRotation>>;
        try {
          handle = await runningRotation(client, request.params.op_id);
        } catch (err) {
          if (err instanceof RotationNotFoundError)
            return reply.status(404).send({ error: 'not_found', message: err.message });
          if (err instanceof RotationNotRunningError)
            return reply.status(409).send({ error: 'conflict', message: err.message });
          throw err;
        }
        const progress =
          definition === abortUpdate
            ? await handle.executeUpdate(abortUpdate, { args: ['admin API'] })
            : await handle.executeUpdate(definition as typeof pauseUpdate);
        return toStatusBody(request.params.op_id, 'RUNNING', progress);
      },
    );
  }

  await app.ready();
  return app;
}
