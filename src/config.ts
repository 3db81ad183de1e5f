import { z } from 'zod';
import { ConfigError } from './errors';

const EnvSchema = z.object({
  DATABASE_URL: z
    .string({ error: 'DATABASE_URL is required (e.g. postgres://user:pass@host:5432/db)' })
    .regex(/^postgres(ql)?:\/\//, 'DATABASE_URL must start with postgres:// or postgresql://'),
  TEMPORAL_ADDRESS: z
    .string()
    .regex(/^[^:\s]+:\d+$/, 'TEMPORAL_ADDRESS must be host:port')
    .default('localhost:7233'),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  REKEY_TASK_QUEUE: z.string().min(1).default('rekey'),
  REKEY_KEY_PROVIDER: z.enum(['env', 'file'], { error: "REKEY_KEY_PROVIDER must be 'env' or 'file'" }).default('env'),
  REKEY_KEYRING_FILE: z.string().min(1).optional(),
});

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

/** The configuration every rekey process shares: database, Temporal, task queue, key provider. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return parseEnv(EnvSchema, env);
}
