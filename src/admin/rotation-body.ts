// rotate-all's body and `rekey rotate`'s options, one to one: the same rotation request from either surface. The
// body's JSON schema (and so the OpenAPI document) is generated from this table, and a test checks the CLI's options
// against it, so that neither surface can gain a field the other lacks.
import { MIN_RESTORE_WINDOW, type RotationRequest } from '../rotation/rotation-input';
import { InvalidRotationError } from '../errors';

interface RotationField {
  /** The body's field. */
  api: string;
  /** The CLI's option. */
  cli: string;
  schema: Record<string, unknown>;
}

const duration = (description: string) => ({ type: 'string', minLength: 1, maxLength: 32, description });
const generation = { type: 'integer', minimum: 1, maximum: 999_999_999 };

export const ROTATION_FIELDS: readonly RotationField[] = [
  {
    api: 'target',
    cli: '--target',
    schema: { type: 'string', minLength: 1, maxLength: 63, description: "the keyspace (default: the API's default)" },
  },
  {
    api: 'from',
    cli: '--from',
    schema: { type: 'string', minLength: 1, maxLength: 64, description: "the KEK in use now (default 'current')" },
  },
  {
    api: 'to',
    cli: '--to',
    schema: {
      type: 'string',
      minLength: 1,
      maxLength: 64,
      description:
        "the KEK to rotate to, or 'new' (default: the KEK the configuration names as current if it is not active yet, else 'new')",
    },
  },
  { api: 'from_version', cli: '--from-version', schema: { ...generation, description: "Mycelium's spelling of from" } },
  { api: 'to_version', cli: '--to-version', schema: { ...generation, description: "Mycelium's spelling of to" } },
  { api: 'dry_run', cli: '--dry-run', schema: { type: 'boolean', description: 'count and census; write nothing' } },
  {
    api: 'tenant_id',
    cli: '--tenant-id',
    schema: { type: 'string', minLength: 1, description: 'canary: rotate this one row and stop' },
  },
  {
    api: 'batch_size',
    cli: '--batch-size',
    schema: { type: 'integer', minimum: 1, maximum: 50000, description: 'rows per batch (default 2000)' },
  },
  {
    api: 'parallelism',
    cli: '--parallelism',
    schema: { type: 'integer', minimum: 1, maximum: 64, description: 'slices rewrapped at once (default 2)' },
  },
  { api: 'grace_period', cli: '--grace', schema: duration('the old KEK stays decrypt-only this long (default 7d)') },
  {
    api: 'restore_window',
    cli: '--restore-window',
    schema: duration('the retired KEK stays restorable this long, then it is destroyed (default 30d)'),
  },
  {
    api: 'allow_short_restore_window',
    cli: '--allow-short-restore-window',
    schema: {
      type: 'string',
      minLength: 1,
      maxLength: 1000,
      description: `why to accept a restore_window shorter than ${MIN_RESTORE_WINDOW} (recorded)`,
    },
  },
  {
    api: 'confirm_timeout',
    cli: '--confirm-timeout',
    schema: duration('a step the application owns waits this long for its evidence or a confirmation (default 3d)'),
  },
  {
    api: 'allow_legacy_values',
    cli: '--allow-legacy-values',
    schema: {
      type: 'string',
      minLength: 1,
      maxLength: 1000,
      description: 'why to rotate although legacy values encrypted by the KEK remain (recorded)',
    },
  },
];

/** The CLI's options with no body field: `--wait` (an HTTP caller polls status_url instead). */
export const CLI_ONLY_OPTIONS: readonly string[] = ['--wait'];

/** rotate-all's body schema, from ROTATION_FIELDS; unknown fields are refused. */
export const rotateAllBody = {
  type: 'object',
  nullable: true,
  additionalProperties: false,
  properties: Object.fromEntries(ROTATION_FIELDS.map((field) => [field.api, field.schema])),
} as const;

export interface RotateAllBody {
  target?: string;
  from?: string;
  to?: string;
  from_version?: number;
  to_version?: number;
  dry_run?: boolean;
  tenant_id?: string;
  batch_size?: number;
  parallelism?: number;
  grace_period?: string;
  restore_window?: string;
  confirm_timeout?: string;
  allow_legacy_values?: string;
  allow_short_restore_window?: string;
}

/** `from` or `from_version` (Mycelium's spelling), at most one of them. */
function pick(name: 'from' | 'to', id: string | undefined, version: number | undefined): string | undefined {
  if (id !== undefined && version !== undefined) {
    throw new InvalidRotationError(`give ${name} or ${name}_version, not both`);
  }
  return id ?? (version === undefined ? undefined : String(version));
}

/**
 * The rotation a body asks for, given the target it names (or the default) and `to` when the body names none. The
 * same request `rekey rotate` builds from the same values.
 */
export async function rotationFromBody(
  body: RotateAllBody,
  target: string,
  defaultTo: () => Promise<string>,
): Promise<RotationRequest> {
  const from = pick('from', body.from, body.from_version) ?? 'current';
  const to = pick('to', body.to, body.to_version) ?? (await defaultTo());
  return {
    target,
    from,
    to,
    ...(body.dry_run !== undefined && { dryRun: body.dry_run }),
    ...(body.tenant_id !== undefined && { tenantId: body.tenant_id }),
    ...(body.batch_size !== undefined && { batchSize: body.batch_size }),
    ...(body.parallelism !== undefined && { parallelism: body.parallelism }),
    ...(body.grace_period !== undefined && { gracePeriod: body.grace_period }),
    ...(body.restore_window !== undefined && { restoreWindow: body.restore_window }),
    ...(body.confirm_timeout !== undefined && { confirmTimeout: body.confirm_timeout }),
    ...(body.allow_legacy_values !== undefined && { allowLegacyValues: body.allow_legacy_values }),
    ...(body.allow_short_restore_window !== undefined && {
      allowShortRestoreWindow: body.allow_short_restore_window,
    }),
  };
}
