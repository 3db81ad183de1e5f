// The controls `rekey grace` and `rekey override-fleet` have on the CLI, over HTTP: the same updates of the running
// rotation, refused the same way (its validators' answers: 400 for bad input, 409 where the run is not).
import type { Client } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';
import { errorBody, opIdParams } from './schemas';
import { rotationStatus, runningRotation, type KeyspaceLookup, type RotationStatus } from '../client/rotations';
import { overrideFleetGateUpdate, setGraceUpdate } from '../workflows/messages';
import { InvalidRotationError } from '../errors';

export interface ControlRouteOptions {
  client: Client;
  /** The rotation-status body, and its schema: what the other controls answer. */
  statusSchema: object;
  toStatusBody: (status: RotationStatus) => object;
  /** A target's keyspace, for an `op_id` that names a rotation by its target. */
  keyspaceOf: KeyspaceLookup;
}

export function registerControlRoutes(app: FastifyInstance, options: ControlRouteOptions): void {
  const { client, statusSchema, toStatusBody, keyspaceOf } = options;

  app.post<{ Params: { op_id: string }; Body: { extend_by?: string; end_now?: boolean } }>(
    '/admin/v1/secrets/rotation/:op_id/grace',
    {
      schema: {
        summary: "Extend or end a rotation's grace period (rekey grace --extend 2d | --end-now)",
        description:
          'Exactly one of `extend_by` (a duration such as 2d) or `end_now: true`. In grace, answers its new end; before grace has begun, the new period, which starts once verify passes.',
        params: opIdParams,
        body: {
          type: 'object',
          additionalProperties: false,
          properties: {
            extend_by: { type: 'string', minLength: 1, maxLength: 32, description: 'add this much, e.g. 2d' },
            end_now: { type: 'boolean', description: 'end the grace period now: retire once the checks pass' },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              op_id: { type: 'string' },
              grace_ends_at: { type: 'string', description: 'in grace: its new end (ISO 8601)' },
              grace_period: { type: 'string', description: 'before grace: the new period' },
              starts_when_verified: { type: 'boolean' },
            },
            required: ['op_id'],
          },
          400: errorBody,
          401: errorBody,
          404: errorBody,
          409: errorBody,
        },
      },
    },
    async (request) => {
      const { extend_by: extendBy, end_now: endNow } = request.body;
      if ((extendBy !== undefined) === (endNow === true)) {
        throw new InvalidRotationError('give exactly one of extend_by (e.g. "2d") or end_now: true');
      }
      const handle = await runningRotation(client, request.params.op_id, keyspaceOf);
      const answer = await handle.executeUpdate(setGraceUpdate, {
        args: [extendBy !== undefined ? { extendBy } : { endNow: true }],
      });
      return {
        op_id: request.params.op_id,
        ...(answer.graceEndsAt !== undefined && { grace_ends_at: answer.graceEndsAt }),
        ...(answer.gracePeriod !== undefined && { grace_period: answer.gracePeriod }),
        ...(answer.startsWhenVerified !== undefined && { starts_when_verified: answer.startsWhenVerified }),
      };
    },
  );

  app.post<{ Params: { op_id: string }; Body: { reason: string } }>(
    '/admin/v1/secrets/rotation/:op_id/override-fleet',
    {
      schema: {
        summary: 'Promote (or run the last pass) without waiting for every application instance (rekey override-fleet)',
        description:
          'Lets the one fleet gate that waits now go; the next gate waits again. 409 when no gate waits for the fleet.',
        params: opIdParams,
        body: {
          type: 'object',
          additionalProperties: false,
          properties: {
            reason: { type: 'string', minLength: 1, maxLength: 1000, description: 'why: recorded in the progress' },
          },
          required: ['reason'],
        },
        response: { 200: statusSchema, 400: errorBody, 401: errorBody, 404: errorBody, 409: errorBody },
      },
    },
    async (request) => {
      const handle = await runningRotation(client, request.params.op_id, keyspaceOf);
      await handle.executeUpdate(overrideFleetGateUpdate, { args: [request.body.reason] });
      return toStatusBody(await rotationStatus(client, request.params.op_id, keyspaceOf));
    },
  );
}
