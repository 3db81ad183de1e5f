import { z } from 'zod';
import { ConfigError } from './errors';

/** REKEY_KEY_PROVIDER: where the process's KEKs are (`auto` detects it as the secrets-manager guide does). */
export const KEY_PROVIDERS = [
  'env',
  'file',
  'aws-secrets-manager',
  'aws-kms',
  'vault',
  'vault-transit',
  'auto',
] as const;
export type KeyProviderName = (typeof KEY_PROVIDERS)[number];

/** Where the process's KEKs are: needed by the commands that touch keys, without a database or Temporal. */
const KeyEnvSchema = z.object({
  REKEY_KEY_PROVIDER: z
    .enum(KEY_PROVIDERS, { error: `REKEY_KEY_PROVIDER must be one of ${KEY_PROVIDERS.join(', ')}` })
    .default('env'),
  REKEY_KEYRING_FILE: z.string().min(1).optional(),
});

const EnvSchema = z
  .object({
    DATABASE_URL: z
      .string({ error: 'DATABASE_URL is required (e.g. postgres://user:pass@host:5432/db)' })
      .regex(/^postgres(ql)?:\/\//, 'DATABASE_URL must start with postgres:// or postgresql://'),
    TEMPORAL_ADDRESS: z
      .string()
      .regex(/^[^:\s]+:\d+$/, 'TEMPORAL_ADDRESS must be host:port')
      .default('localhost:7233'),
    TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
    REKEY_TASK_QUEUE: z.string().min(1).default('rekey'),
  })
  .extend(KeyEnvSchema.shape);

export type Config = z.infer<typeof EnvSchema>;

/** Validates environment variables against `schema`; the message names every variable to fix. */
export function parseEnv<S extends z.ZodType>(schema: S, env: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  }
  return parsed.data;
}

/** The key provider settings alone (REKEY_KEY_PROVIDER, REKEY_KEYRING_FILE). */
export function loadKeyConfig(env: NodeJS.ProcessEnv = process.env): z.infer<typeof KeyEnvSchema> {
  return parseEnv(KeyEnvSchema, env);
}

/** The configuration every rekey process shares: database, Temporal, task queue, key provider. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return parseEnv(EnvSchema, env);
}
