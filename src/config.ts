import { z } from 'zod';
import { ConfigError } from './errors';
import { KEY_PROVIDERS, type KeyProviderName } from './keyring/stores';

/** REKEY_KEY_PROVIDER: where the process's KEKs are; its values are the stores' own (src/keyring/stores.ts). */
export { KEY_PROVIDERS, type KeyProviderName } from './keyring/stores';

/** Where the process's KEKs are: needed by the commands that touch keys, without a database or Temporal. */
const KeyEnvSchema = z.object({
  REKEY_KEY_PROVIDER: z
    .enum(KEY_PROVIDERS, { error: `REKEY_KEY_PROVIDER must be one of ${KEY_PROVIDERS.join(', ')}` })
    .optional(),
  REKEY_KEYRING_FILE: z.string().min(1).optional(),
});

/**
 * The store a process's own keys are in, the one rule of every rekey process (worker, admin API, CLI, `rekey keys`):
 * REKEY_KEY_PROVIDER when it is set; else the keyring file when REKEY_KEYRING_FILE is set; else the environment.
 */
export function keyProviderOf(settings: {
  REKEY_KEY_PROVIDER?: KeyProviderName | undefined;
  REKEY_KEYRING_FILE?: string | undefined;
}): KeyProviderName {
  return settings.REKEY_KEY_PROVIDER ?? (settings.REKEY_KEYRING_FILE !== undefined ? 'file' : 'env');
}

/** The key settings with REKEY_KEY_PROVIDER decided (keyProviderOf). */
function withKeyProvider<T extends z.infer<typeof KeyEnvSchema>>(
  settings: T,
): Omit<T, 'REKEY_KEY_PROVIDER'> & { REKEY_KEY_PROVIDER: KeyProviderName } {
  return { ...settings, REKEY_KEY_PROVIDER: keyProviderOf(settings) };
}

/**
 * Why `value` is not a PostgreSQL connection URL (postgres://user:password@host:5432/database, or a socket given as
 * `?host=/path`), or undefined when it is one. Never quotes the value: it may hold a password.
 */
export function databaseUrlProblem(value: string): string | undefined {
  if (!/^postgres(ql)?:\/\//.test(value)) return 'must start with postgres:// or postgresql://';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'is not a URL (a password with @, :, / or # must be percent-encoded)';
  }
  if (url.hostname === '' && !url.searchParams.has('host'))
    return 'names no host (postgres://user:password@host:5432/database)';
  if (url.pathname.replace(/^\//, '') === '') return 'names no database (…/database at its end)';
  return undefined;
}

/** `value` of the variable `variable` as a PostgreSQL URL, or a ConfigError that names the variable and what to fix. */
export function checkDatabaseUrl(value: string | undefined, variable: string): string {
  if (value === undefined || value.trim() === '') {
    throw new ConfigError(`${variable} is not set: set it to postgres://user:password@host:5432/database`);
  }
  const problem = databaseUrlProblem(value.trim());
  if (problem !== undefined) {
    throw new ConfigError(
      `${variable} ${problem}: e.g. postgres://user:password@host:5432/database (its value is not shown: it may hold a password)`,
    );
  }
  return value.trim();
}

const EnvSchema = z
  .object({
    DATABASE_URL: z
      .string({ error: 'DATABASE_URL is required (e.g. postgres://user:pass@host:5432/db)' })
      .superRefine((value, context) => {
        const problem = databaseUrlProblem(value);
        if (problem !== undefined) context.addIssue({ code: 'custom', message: `DATABASE_URL ${problem}` });
      }),
    TEMPORAL_ADDRESS: z
      .string()
      .regex(/^[^:\s]+:\d+$/, 'TEMPORAL_ADDRESS must be host:port')
      .default('localhost:7233'),
    TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
    REKEY_TASK_QUEUE: z.string().min(1).default('rekey'),
  })
  .extend(KeyEnvSchema.shape);

export type Config = ReturnType<typeof withKeyProvider<z.infer<typeof EnvSchema>>>;

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
export function loadKeyConfig(env: NodeJS.ProcessEnv = process.env) {
  return withKeyProvider(parseEnv(KeyEnvSchema, env));
}

/** The configuration every rekey process shares: database, Temporal, task queue, key provider. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return withKeyProvider(parseEnv(EnvSchema, env));
}
