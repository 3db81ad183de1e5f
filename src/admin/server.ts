import { createHash, timingSafeEqual } from 'node:crypto';
import swagger from '@fastify/swagger';
import type { Client } from '@temporalio/client';
import {
  errorBody,
  failureFields,
  failureProperties,
  opIdParams,
  retryingBody,
  runStatusBody,
  runStatusFields,
} from './schemas';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { scanned } from '../cli/format';
import { COUNTER_NAMES } from '../rewrap/counters';
import {
  failureMessage,
  rotationStatus,
  runningRotation,
  startRotation,
  type RotationStatus,
  type StartOutcome,
} from '../client/rotations';
import { rotationWorkflowId } from '../rotation/identity';
import { describeTargetKek, type RotationRequest } from '../rotation/rotation-input';
import { ENDED_WELL, type RunStatus } from '../rotation/run-status';
import { targetKekStatus } from '../targets/kek-status';
import { restoreKek } from '../targets/restore-kek';
import { registerControlRoutes } from './control-routes';
import { registerMigrationRoutes } from './migration-routes';
import { rotateAllBody, rotationFromBody, type RotateAllBody } from './rotation-body';
import type { TargetRuntimes } from '../targets/runtime';
import { abortUpdate, confirmStepUpdate, pauseUpdate, resumeUpdate } from '../workflows/messages';
import { runHistory } from '../client/history';
import {
  databaseUnreachable,
  ERROR_CODES as KIND_ERROR_CODES,
  errorAnswer,
  errorKind,
  hasKnownType,
  HTTP_STATUSES,
  httpStatusFor,
  type ErrorKind,
  KeyMaterialError,
  RekeyError,
  UNAVAILABLE_RETRY_AFTER_SECONDS,
} from '../errors';

export interface AdminServerOptions {
  client: Client;
  /** The targets this API serves (their tables, registries and, for loaded_kek_ids, key sources). */
  targets: TargetRuntimes;
  /** The target a request names none of. */
  defaultTarget: string;
  taskQueue: string;
  /** Bearer token every request must carry (compared in constant time). */
  token: string;
  /**
   * The KEK the deployment's configuration names as current, per target (e.g. TALOS_CURRENT_KEK_ID): `rotate-all`
   * rotates to it when it is not active yet, as after the runbook's step 2.
   */
  configuredCurrentKekId: (target: string) => string | undefined;
  /** A run's page in the Temporal Web UI (REKEY_WEB_UI_URL), given in rotate-all's answer as web_ui_url. */
  webUiUrl?: (workflowId: string) => string;
  logger?: boolean;
}

const counters = {
  type: 'object',
  properties: Object.fromEntries(COUNTER_NAMES.map((k) => [k, { type: 'integer' }])),
} as const;

/** rotate-all's answer once validate has accepted the rotation: the KEKs it resolved (`current` named). */
const startedBody = {
  type: 'object',
  properties: {
    op_id: { type: 'string' },
    status: { type: 'string' },
    message: { type: 'string' },
    status_url: { type: 'string' },
    target: { type: 'string' },
    from: { type: 'string' },
    to: {
      type: 'string',
      description:
        "'new' for a KEK generated at provision (its id is in status_url's target_kek_id once provisioned), else its id",
    },
    web_ui_url: { type: 'string', description: "the run's page in the Temporal Web UI (REKEY_WEB_UI_URL)" },
  },
  required: ['op_id', 'status_url'],
} as const;

const rotationStatusBody = {
  type: 'object',
  properties: {
    // Talos's rotation-status fields, so that its scripts and dashboards keep working.
    id: { type: 'string' },
    status: { type: 'string', enum: ['running', 'completed', 'failed'] },
    target_kek_id: {
      type: 'string',
      nullable: true,
      description: 'the KEK the run rotates to; null until a run that generates its KEK has provisioned it',
    },
    cursor: { type: 'string', nullable: true },
    stats: {
      type: 'object',
      properties: { scanned: { type: 'integer' }, rotated: { type: 'integer' }, failed: { type: 'integer' } },
    },
    started_at: { type: 'string', nullable: true },
    completed_at: { type: 'string', nullable: true },
    last_error: { type: 'string', nullable: true },
    // rekey's own.
    op_id: { type: 'string' },
    target: { type: 'string' },
    execution_status: {
      type: 'string',
      description: 'Temporal execution status: RUNNING, COMPLETED, FAILED, TERMINATED, ...',
    },
    phase: { type: 'string' },
    outcome: {
      type: 'string',
      enum: ['running', 'completed', 'aborted', 'dry-run', 'canary', 'nothing-to-do', 'failed'],
      description:
        "how the run ended, as its progress query says: 'running' until it has; 'failed' for a run that failed (then `failure` says with what)",
    },
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
    waiting: {
      type: 'object',
      properties: {
        kind: { type: 'string' },
        step: { type: 'string' },
        instructions: { type: 'string' },
        command: { type: 'string' },
        confirmationOnly: { type: 'boolean' },
        since: { type: 'number' },
      },
    },
    note: { type: 'string' },
    failure: { type: 'string' },
    ...failureProperties,
    run_status: runStatusBody,
    grace_ends_at: { type: 'string', description: 'in grace: when the old KEK retires (ISO 8601)' },
    grace_remaining_seconds: {
      type: 'integer',
      description: 'in grace: seconds until then, counted from the moment of this answer',
    },
    retrying: retryingBody,
  },
  required: ['id', 'op_id', 'status', 'run_status'],
} as const;

/** Talos's three states, from the one status: a run that ended without doing its work (aborted, failed) is `failed`. */
function talosStatus(run: RunStatus): 'running' | 'completed' | 'failed' {
  if (!run.ended) return 'running';
  return ENDED_WELL.includes(run.state) ? 'completed' : 'failed';
}

function toStatusBody(s: RotationStatus) {
  const { progress, run } = s;
  const lastError =
    s.failure ?? (run.state === 'aborted' ? run.reason : undefined) ?? run.retrying?.lastError ?? undefined;
  return {
    id: s.opId,
    status: talosStatus(run),
    // A KEK id, or null while a run that generates its KEK has not provisioned it ('new' is no KEK's id).
    target_kek_id: progress === undefined || progress.to === 'new' ? null : progress.to,
    stats: progress && {
      scanned: scanned(progress),
      rotated: progress.counters.rewrapped + (progress.counters.relabelled ?? 0),
      failed: progress.counters.failed,
    },
    started_at: s.startedAt?.toISOString() ?? null,
    completed_at: s.closedAt?.toISOString() ?? null,
    last_error: lastError ?? null,
    op_id: s.opId,
    execution_status: s.status,
    ...(progress && {
      target: progress.target ?? 'rekey',
      phase: progress.phase,
      outcome: progress.outcome,
      from: progress.from,
      to: progress.to,
      percent: run.percent,
      paused: progress.paused,
      passes: progress.passes,
      stale_at_start: progress.staleAtStart,
      rate_per_second: progress.ratePerSecond,
      eta_seconds: progress.etaSeconds,
      counters: progress.counters,
      failed_tenants: progress.failedTenants,
      waiting: progress.waiting,
      note: progress.note,
    }),
    // A failed run's progress is not read (no worker needed): its outcome is what the run's progress query says.
    ...(s.status === 'FAILED' && { outcome: 'failed' }),
    ...(s.failure !== undefined && { failure: s.failure }),
    ...failureFields(s),
    ...runStatusFields(run),
  };
}

const historyBody = {
  type: 'object',
  properties: {
    target: { type: 'string' },
    rotations: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          op_id: { type: 'string' },
          kind: { type: 'string', enum: ['rotation', 'migration'] },
          from: { type: 'string', nullable: true },
          to: { type: 'string', nullable: true },
          started_at: { type: 'string' },
          ended_at: { type: 'string', nullable: true },
          state: runStatusBody.properties.state,
          label: { type: 'string' },
          reason: { type: 'string' },
          rows_total: { type: 'integer' },
          rows_moved: { type: 'integer' },
          rows_unreadable: { type: 'integer' },
          source: { type: 'string', enum: ['rekey', 'temporal'] },
          database_unknown: { type: 'string' },
        },
      },
    },
    temporal_unavailable: { type: 'string' },
  },
} as const;

function sameToken(given: string, expected: string): boolean {
  // Hash both sides first: equal lengths for timingSafeEqual, and no early exit on a length mismatch.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The `error` of each status rekey's kinds map to (src/errors.ts), the 500s apart. */
const ERROR_CODES: Record<number, string> = Object.fromEntries(
  (Object.keys(KIND_ERROR_CODES) as ErrorKind[])
    .filter((kind) => HTTP_STATUSES[kind] < 500)
    .map((kind) => [HTTP_STATUSES[kind], KIND_ERROR_CODES[kind]]),
);

/**
 * The admin API's answer to an error: rekey's errors by their kind (src/errors.ts, the same mapping as the CLI's exit
 * codes), Fastify's own (schema validation, bad JSON) by the status Fastify gave them.
 */
export function errorReply(error: Error & { statusCode?: number }): {
  status: number;
  body: { error: string; message: string; next?: string };
  retryAfter?: number;
} {
  const kind = errorKind(error);
  if (kind === 'unavailable') {
    // The database is unreachable: 503 at once, saying so (the driver's message names no secret), and when to ask
    // again. A run's failure read back (its type says so, no driver error in it) says its own message.
    return {
      status: httpStatusFor(error),
      body: { error: 'database_unreachable', message: databaseUnreachable(error)?.message ?? failureMessage(error) },
      retryAfter: UNAVAILABLE_RETRY_AFTER_SECONDS,
    };
  }
  const status = kind !== 'failed' ? httpStatusFor(error) : (error.statusCode ?? 500);
  // A run's failure of one of the workflow's types is named by its code, with what to do next (errorAnswer), as the
  // CLI names it.
  const { error: code, next } = errorAnswer(error);
  if (next !== undefined) return { status, body: { error: code, message: failureMessage(error), next } };
  // rekey's own errors (and Temporal failures carrying one) say what failed and never carry a secret; anything else
  // is not shown.
  const own = error instanceof RekeyError || hasKnownType(error);
  return {
    status,
    body: {
      error: ERROR_CODES[status] ?? (status >= 500 ? 'internal' : 'error'),
      message: status >= 500 && !own ? 'internal error' : failureMessage(error),
    },
  };
}

/** The admin API of the gateway runbook, on rekey: rotate-all, rotation-status, kek-status, and controls. */
export async function buildAdminServer(options: AdminServerOptions): Promise<FastifyInstance> {
  const { client, targets, taskQueue, token } = options;
  // A rotation named by its target is that target's in the database this API serves.
  const keyspaceOf = async (target: string) => (targets.has(target) ? targets.keyspace(target) : undefined);
  // Unknown fields are refused (400), not silently dropped: a typo in a rotation request must not go unnoticed.
  const app = Fastify({ logger: options.logger ?? false, ajv: { customOptions: { removeAdditional: false } } });
  await app.register(swagger, {
    openapi: {
      info: {
        title: 'rekey admin API',
        version: '2.0.0',
        description: 'KEK rotation of any target, as a drop-in for the gateway runbook',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.setErrorHandler((error: Error & { statusCode?: number; validation?: unknown }, _request, reply) => {
    const answer = errorReply(error);
    if (answer.retryAfter !== undefined) {
      app.log.warn({ err: error.message }, 'the database is unreachable');
      reply.header('retry-after', String(answer.retryAfter));
    } else if (answer.status >= 500) app.log.error(error);
    return reply.status(answer.status).send(answer.body);
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

  app.post<{ Body: RotateAllBody | undefined }>(
    '/admin/v1/secrets/rotate-all',
    {
      schema: {
        summary: 'Start re-wrapping every row of a target under a new KEK',
        description:
          "Rotates a target (default: the API's default target) from its active KEK (default 'current') to `to`: by default the KEK the configuration names as current (as after the runbook's step 2; once every row is on it, 200: nothing left to rotate), else a newly generated one. The answer comes once the rotation's validate step has decided: 202 with the KEKs it resolved; 200 when there is nothing to do; a refusal with the status of its kind (400 an unknown KEK, target or table, 422 legacy values left or a key that is not the registered one), and nothing was written. At most one rotation runs per target: a second request answers 409 with the running op_id.",
        // The same fields as `rekey rotate`'s options (src/admin/rotation-body.ts).
        body: rotateAllBody,
        response: {
          200: startedBody,
          202: startedBody,
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
      const runtime = await targets.get(target);
      // As in the runbook: to the KEK the configuration names as current, also once it is the active one (then
      // validate answers that nothing is left to rotate, or takes up rows an earlier run left); where the
      // configuration names none, to a newly generated one.
      const rotation: RotationRequest = await rotationFromBody(body, target, () =>
        Promise.resolve(options.configuredCurrentKekId(target) ?? 'new'),
      );
      const { from, to } = rotation;
      const started: StartOutcome = await startRotation(client, rotation, {
        taskQueue,
        keyspace: runtime.keyspace,
        startedBy: 'admin API',
      });
      const statusUrl = `/admin/v1/secrets/rotation-status/${encodeURIComponent(started.opId)}`;
      if (started.kind === 'already-running') {
        return reply.status(409).send({
          error: 'ROTATION_ALREADY_RUNNING',
          message: `a rotation of target '${target}' is already running: ${started.opId}`,
          op_id: started.opId,
        });
      }
      const validated = started.validated;
      const kekFrom = validated?.from ?? from;
      const kekTo = validated?.to ?? to;
      const answer = { op_id: started.opId, status_url: statusUrl, target, from: kekFrom, to: kekTo };
      if (validated?.outcome === 'nothing-to-do') {
        // Validate decided there is nothing to do: the run has ended, saying why.
        return reply.status(200).send({ ...answer, status: 'completed', message: validated.note ?? 'nothing to do' });
      }
      return reply.status(202).send({
        ...answer,
        status: 'running',
        message:
          `rotation of target '${target}' started ('${kekFrom}' → ${describeTargetKek(kekTo)})` +
          (started.unanswered !== undefined ? `; not validated yet: ${started.unanswered}` : ''),
        ...(options.webUiUrl && { web_ui_url: options.webUiUrl(started.handle.workflowId) }),
      });
    },
  );

  app.get<{ Params: { op_id: string } }>(
    '/admin/v1/secrets/rotation-status/:op_id',
    {
      schema: {
        summary: 'Progress of one rotation (an op_id, a workflow id, or a target name for its latest rotation)',
        params: opIdParams,
        response: { 200: rotationStatusBody, 401: errorBody, 404: errorBody },
      },
    },
    async (request) => toStatusBody(await rotationStatus(client, request.params.op_id, keyspaceOf)),
  );

  app.get<{ Querystring: { target?: string; limit?: number } }>(
    '/admin/v1/secrets/rotations',
    {
      schema: {
        summary: "A keyspace's rotations and migrations, newest first, as rekey history lists them",
        description:
          "Each run with from → to, start, end, the one status it ended in (or is in) and its counts, like `aws kms list-key-rotations`. Read from rekey.run_history (written by each run's last step; kept as long as the database) and, for runs still going or ended by Temporal itself, from Temporal's visibility.",
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            target: { type: 'string', minLength: 1, maxLength: 63 },
            limit: { type: 'integer', minimum: 1, maximum: 1000, default: 20 },
          },
        },
        response: { 200: historyBody, 400: errorBody, 401: errorBody },
      },
    },
    async (request) => {
      const target = request.query.target ?? options.defaultTarget;
      const history = await runHistory({
        db: await targets.databaseOf(target),
        client: () => Promise.resolve(client),
        target,
        keyspace: await targets.keyspace(target),
        limit: request.query.limit ?? 20,
      });
      return {
        target,
        rotations: history.runs.map((run) => ({
          op_id: run.opId,
          kind: run.kind,
          from: run.from ?? null,
          to: run.to ?? null,
          started_at: run.startedAt,
          ended_at: run.endedAt ?? null,
          state: run.state,
          label: run.label,
          reason: run.reason,
          rows_total: run.rows.total,
          rows_moved: run.rows.moved,
          rows_unreadable: run.rows.unreadable,
          source: run.source,
          ...(run.databaseUnknown !== undefined && { database_unknown: run.databaseUnknown }),
        })),
        ...(history.temporalUnavailable !== undefined && { temporal_unavailable: history.temporalUnavailable }),
      };
    },
  );

  app.get<{ Querystring: { target?: string } }>(
    '/admin/v1/secrets/kek-status',
    {
      schema: {
        summary: "A target's current KEK, the KEKs this process holds, and the rows each KEK wraps",
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { target: { type: 'string', minLength: 1, maxLength: 63 } },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              target: { type: 'string' },
              keyspace: {
                type: 'object',
                description: "the target's table in its database (by the database's identity)",
                properties: { id: { type: 'string' }, database_id: { type: 'string' }, table: { type: 'string' } },
              },
              workflow_id: { type: 'string', description: "the workflow id the target's rotations run under" },
              current_kek_id: { type: 'string', nullable: true },
              loaded_kek_ids: { type: 'array', items: { type: 'string' } },
              stale_counts: { type: 'object', additionalProperties: { type: 'integer' } },
              dek_counts: { type: 'object', additionalProperties: { type: 'integer' } },
              rows_without_value: { type: 'integer' },
              keks: {
                type: 'array',
                description: "each KEK of the target's registry; a retired one with its restore deadline",
                items: {
                  type: 'object',
                  properties: {
                    kek_id: { type: 'string' },
                    state: { type: 'string' },
                    fingerprint: { type: 'string' },
                    activated_at: { type: 'string', nullable: true },
                    retired_at: { type: 'string', nullable: true },
                    restorable_until: { type: 'string', nullable: true },
                    destroyed_at: { type: 'string', nullable: true },
                  },
                },
              },
            },
          },
          400: errorBody,
          401: errorBody,
        },
      },
    },
    async (request) => {
      const runtime = await targets.get(request.query.target ?? options.defaultTarget);
      const status = await targetKekStatus(runtime);
      let loaded: string[] = [];
      try {
        loaded = [...new Set((await runtime.keyring.held()).map((k) => k.kekId))].sort();
      } catch (err) {
        if (!(err instanceof KeyMaterialError)) throw err; // this process holds no key for the target: none loaded
      }
      const { keyspace } = runtime;
      return {
        target: status.target,
        keyspace: { id: keyspace.id, database_id: keyspace.databaseId, table: keyspace.table },
        workflow_id: rotationWorkflowId(status.target, keyspace),
        current_kek_id: status.currentKekId,
        loaded_kek_ids: loaded,
        // As Talos counts: rows per key_id, the current one included; every KEK the registry records, 0 once unused.
        stale_counts: status.staleCounts,
        dek_counts: status.counts,
        rows_without_value: status.withoutValue,
        keks: status.keks.map((kek) => ({
          kek_id: kek.kekId,
          state: kek.state,
          fingerprint: kek.fingerprint,
          activated_at: kek.activatedAt?.toISOString() ?? null,
          retired_at: kek.retiredAt?.toISOString() ?? null,
          restorable_until: kek.restorableUntil?.toISOString() ?? null,
          destroyed_at: kek.destroyedAt?.toISOString() ?? null,
        })),
      };
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
      async (request) => {
        const handle = await runningRotation(client, request.params.op_id, keyspaceOf);
        if (definition === abortUpdate) await handle.executeUpdate(abortUpdate, { args: ['admin API'] });
        else await handle.executeUpdate(definition as typeof pauseUpdate);
        return toStatusBody(await rotationStatus(client, request.params.op_id, keyspaceOf));
      },
    );
  }

  app.post<{ Params: { op_id: string }; Body: { step: 'promote' | 'retire'; note: string } }>(
    '/admin/v1/secrets/rotation/:op_id/confirm',
    {
      schema: {
        summary: 'Confirm that the application did the step the rotation waits for (promote or retire)',
        params: opIdParams,
        body: {
          type: 'object',
          additionalProperties: false,
          properties: { step: { type: 'string', enum: ['promote', 'retire'] }, note: { type: 'string', minLength: 1 } },
          required: ['step', 'note'],
        },
        response: { 200: rotationStatusBody, 400: errorBody, 401: errorBody, 404: errorBody, 409: errorBody },
      },
    },
    async (request) => {
      const handle = await runningRotation(client, request.params.op_id, keyspaceOf);
      await handle.executeUpdate(confirmStepUpdate, { args: [request.body] });
      return toStatusBody(await rotationStatus(client, request.params.op_id, keyspaceOf));
    },
  );

  app.post<{ Params: { kek_id: string }; Body: { target?: string; reason: string; actor: string } }>(
    '/admin/v1/secrets/keks/:kek_id/restore',
    {
      schema: {
        summary: 'Bring a retired KEK back to decrypt-only within its restore window, recorded with who and why',
        description:
          'The runbook\'s "re-add the old KEK immediately to restore service", as `rekey keys restore`: the key store must still hold the key the registry recorded; the registry and the audit row (rekey.kek_events) are written in one transaction. A KEK past its window, destroyed or unknown answers 422 with the reason; a KEK already decrypt-only answers 200 and records nothing.',
        params: {
          type: 'object',
          properties: { kek_id: { type: 'string', minLength: 1, maxLength: 64 } },
          required: ['kek_id'],
        },
        body: {
          type: 'object',
          additionalProperties: false,
          properties: {
            target: { type: 'string', minLength: 1, maxLength: 63 },
            reason: { type: 'string', minLength: 1, maxLength: 1000, description: 'why; recorded with the restore' },
            actor: { type: 'string', minLength: 1, maxLength: 200, description: 'who asks; recorded with the reason' },
          },
          required: ['reason', 'actor'],
        },
        response: {
          200: {
            type: 'object',
            properties: {
              target: { type: 'string' },
              kek_id: { type: 'string' },
              state: { type: 'string' },
              fingerprint: { type: 'string' },
              actor: { type: 'string' },
              operator_must: {
                type: 'string',
                description:
                  'what the operator must still do in a key store rekey may not write (the environment: set the key again in every process); absent when nothing',
              },
            },
          },
          400: errorBody,
          401: errorBody,
          422: errorBody,
        },
      },
    },
    async (request) => {
      const target = request.body.target ?? options.defaultTarget;
      const kekId = request.params.kek_id;
      const restored = await restoreKek(await targets.get(target), kekId, request.body.reason, request.body.actor);
      return {
        target,
        kek_id: kekId,
        state: restored.state,
        fingerprint: restored.fingerprint,
        actor: request.body.actor,
        ...(restored.operatorMust !== undefined && { operator_must: restored.operatorMust }),
      };
    },
  );

  registerControlRoutes(app, { client, statusSchema: rotationStatusBody, toStatusBody, keyspaceOf });
  registerMigrationRoutes(app, {
    client,
    taskQueue,
    defaultTarget: options.defaultTarget,
    keyspace: (target) => targets.keyspace(target),
    keyspaceOf,
  });

  await app.ready();
  return app;
}
