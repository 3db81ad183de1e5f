// Every environment variable a rekey process reads, with its default: what `--help` of the worker and of the admin
// API prints. test/surfaces/process-help.test.ts checks that every variable the sources read is listed here.
import { KEY_PROVIDERS } from './keyring/stores';

export type Reader = 'worker' | 'admin' | 'cli';

export interface EnvironmentVariable {
  /** The name; `<PREFIX>_KEK_<id>` for a family of names. */
  name: string;
  /** The default, in words ('required' when there is none and it must be set). */
  default: string;
  what: string;
  readBy: readonly Reader[];
  /**
   * A setting of how much or how fast a worker works (threads, rates, batches), not of where it connects or which
   * keys it holds: the benchmarks pass it from their own environment to the workers they start (WORKER_TUNING).
   */
  tunes?: true;
}

const ALL: readonly Reader[] = ['worker', 'admin', 'cli'];

export const ENVIRONMENT: readonly EnvironmentVariable[] = [
  {
    name: 'DATABASE_URL',
    default: 'required',
    what: 'postgres://user:password@host:5432/database: the database of the targets (rekey keeps its bookkeeping in its rekey schema)',
    readBy: ALL,
  },
  { name: 'TEMPORAL_ADDRESS', default: 'localhost:7233', what: 'the Temporal frontend, host:port', readBy: ALL },
  { name: 'TEMPORAL_NAMESPACE', default: 'default', what: 'the Temporal namespace', readBy: ALL },
  {
    name: 'TEMPORAL_TLS_CLIENT_CERT_PATH',
    default: 'none',
    what: "rekey's client certificate (PEM) for Temporal's mTLS, with TEMPORAL_TLS_CLIENT_KEY_PATH; any TEMPORAL_TLS_* turns TLS on",
    readBy: ALL,
  },
  {
    name: 'TEMPORAL_TLS_CLIENT_KEY_PATH',
    default: 'none',
    what: "the client certificate's key (PEM), with TEMPORAL_TLS_CLIENT_CERT_PATH",
    readBy: ALL,
  },
  {
    name: 'TEMPORAL_TLS_SERVER_CA_CERT_PATH',
    default: "the system's CAs",
    what: "the CA that signed the Temporal frontend's certificate (PEM)",
    readBy: ALL,
  },
  {
    name: 'TEMPORAL_TLS_SERVER_NAME',
    default: 'the host of TEMPORAL_ADDRESS',
    what: "the name in the Temporal frontend's certificate",
    readBy: ALL,
  },
  {
    name: 'TEMPORAL_API_KEY',
    default: 'none',
    what: "sent to Temporal as 'authorization: Bearer <key>' (an API key, or the JWT its claim mapper reads)",
    readBy: ALL,
  },
  {
    name: 'TEMPORAL_TLS',
    default: 'false, unless another TEMPORAL_TLS_* or TEMPORAL_API_KEY is set',
    what: 'true: TLS with the system CAs and no client certificate; false beside any TLS setting is refused',
    readBy: ALL,
  },
  { name: 'REKEY_TASK_QUEUE', default: 'rekey', what: 'the task queue the workers poll', readBy: ALL },
  {
    name: 'REKEY_TARGETS',
    default: 'REKEY_DEFAULT_TARGET, else every target',
    what: 'the targets this worker serves, separated by commas (it needs the keys of those alone)',
    readBy: ['worker'],
  },
  {
    name: 'REKEY_DEFAULT_TARGET',
    default: 'rekey',
    what: 'the target a request names none of; a worker without REKEY_TARGETS serves this one alone',
    readBy: ALL,
  },
  {
    name: 'REKEY_CONFIG',
    default: 'none: the presets rekey, mycelium, talos',
    what: 'a YAML or JSON file of targets (and the variables it names for their databases and keys)',
    readBy: ALL,
  },
  {
    name: 'REKEY_KEY_PROVIDER',
    default: 'env',
    what: `where the KEKs of targets with 'keys: default' (rekey's own table) are: ${KEY_PROVIDERS.join(', ')}`,
    readBy: ALL,
  },
  { name: 'REKEY_KEYRING_FILE', default: 'none', what: 'the keyring file (REKEY_KEY_PROVIDER=file)', readBy: ALL },
  {
    name: 'REKEY_ENV_PREFIX',
    default: 'REKEY',
    what: 'the prefix of the env key provider: <PREFIX>_KEK_<id>, <PREFIX>_CURRENT_KEK_ID',
    readBy: ALL,
  },
  {
    name: '<PREFIX>_KEK_<id>',
    default: 'none',
    what: 'a KEK, 32 random bytes in base64url without padding (REKEY_KEK_v1; Talos: TALOS_KEK_v1)',
    readBy: ALL,
  },
  {
    name: '<PREFIX>_CURRENT_KEK_ID',
    default: 'none',
    what: 'the KEK the deployment uses now (REKEY_CURRENT_KEK_ID; Talos: TALOS_CURRENT_KEK_ID)',
    readBy: ALL,
  },
  {
    name: 'MYC_TOKEN_SECRET',
    default: 'none',
    what: "Mycelium's current token_secret (a UUID): the KEK of the mycelium target",
    readBy: ALL,
  },
  {
    name: 'MYC_OLD_TOKEN_SECRET',
    default: 'none',
    what: "Mycelium's previous token_secret, during a rotation",
    readBy: ALL,
  },
  {
    name: 'REKEY_AWS_SECRET_ID',
    default: 'none',
    what: 'the Secrets Manager secret holding the KEKs (REKEY_KEY_PROVIDER=aws-secrets-manager)',
    readBy: ALL,
  },
  {
    name: 'AWS_REGION',
    default: 'AWS_DEFAULT_REGION',
    what: 'the AWS region (also how REKEY_KEY_PROVIDER=auto detects AWS)',
    readBy: ALL,
  },
  { name: 'AWS_DEFAULT_REGION', default: 'none', what: 'the AWS region when AWS_REGION is unset', readBy: ALL },
  {
    name: 'AWS_ENDPOINT_URL',
    default: "AWS's",
    what: 'an endpoint for every AWS service (a VPC endpoint, moto); AWS_ENDPOINT_URL_SECRETS_MANAGER and AWS_ENDPOINT_URL_KMS for one',
    readBy: ALL,
  },
  { name: 'AWS_MAX_ATTEMPTS', default: '10', what: "the AWS SDK's attempts per call, with backoff", readBy: ALL },
  {
    name: 'REKEY_AWS_TIMEOUT',
    default: '60',
    what: 'seconds one AWS call may take, connecting included, before it fails and is tried again (1 to 3600)',
    readBy: ALL,
  },
  {
    name: 'AWS_ACCESS_KEY_ID',
    default: "the SDK's default chain",
    what: 'AWS credentials, with AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or SSO, shared files, an instance or task role)',
    readBy: ALL,
  },
  {
    name: 'REKEY_AWS_KMS_ALIAS_PREFIX',
    default: 'alias/rekey/',
    what: 'the alias prefix of the KMS keys (REKEY_KEY_PROVIDER=aws-kms)',
    readBy: ALL,
  },
  {
    name: 'REKEY_AWS_KMS_CONCURRENCY',
    default: '16',
    what: 'KMS calls in flight at once, a slice',
    readBy: ALL,
    tunes: true,
  },
  {
    name: 'REKEY_AWS_KMS_RATE',
    default: '500',
    what: 'KMS calls started per second (0: no limit)',
    readBy: ALL,
    tunes: true,
  },
  {
    name: 'REKEY_AWS_KMS_DELETION_WINDOW_DAYS',
    default: '30',
    what: "the pending window (7-30 days) of a destroyed KMS key's deletion",
    readBy: ALL,
  },
  {
    name: 'REKEY_AWS_KMS_LOCAL_KEYS',
    default: 'none',
    what: 'env or file: where the local KEKs are while a keyspace moves into KMS',
    readBy: ALL,
  },
  {
    name: 'VAULT_ADDR',
    default: 'none',
    what: 'the Vault server (REKEY_KEY_PROVIDER=vault or vault-transit); REKEY_KEY_PROVIDER=auto picks Vault KV when it is set',
    readBy: ALL,
  },
  {
    name: 'VAULT_TOKEN',
    default: 'none',
    what: "a Vault token whose policy grants rekey's paths (docs/06-key-stores.md, KEKs in Vault, gives the policy)",
    readBy: ALL,
  },
  { name: 'VAULT_NAMESPACE', default: 'none', what: 'the Vault namespace (Vault Enterprise)', readBy: ALL },
  { name: 'VAULT_CLIENT_TIMEOUT', default: '60', what: 'seconds a Vault call may take (1 to 3600)', readBy: ALL },
  {
    name: 'VAULT_CACERT',
    default: 'system CAs',
    what: "a PEM file of the CA certificate(s) that verify Vault's (takes precedence over VAULT_CAPATH)",
    readBy: ALL,
  },
  {
    name: 'VAULT_CAPATH',
    default: 'system CAs',
    what: "a directory of PEM CA certificates that verify Vault's",
    readBy: ALL,
  },
  {
    name: 'VAULT_CLIENT_CERT',
    default: 'none',
    what: 'a PEM client certificate for TLS authentication to Vault (with VAULT_CLIENT_KEY)',
    readBy: ALL,
  },
  { name: 'VAULT_CLIENT_KEY', default: 'none', what: 'the PEM private key of VAULT_CLIENT_CERT', readBy: ALL },
  {
    name: 'VAULT_TLS_SERVER_NAME',
    default: 'the host of VAULT_ADDR',
    what: "the name sent as SNI and checked against Vault's certificate",
    readBy: ALL,
  },
  {
    name: 'VAULT_SKIP_VERIFY',
    default: 'false',
    what: "true: Vault's certificate is not verified (logged as a warning; for a test server only)",
    readBy: ALL,
  },
  {
    name: 'REKEY_VAULT_KV_MOUNT',
    default: 'secret',
    what: "the KV v2 mount (REKEY_KEY_PROVIDER=vault); a Transit key's owner record is at secret/ whatever it says",
    readBy: ALL,
  },
  {
    name: 'REKEY_VAULT_KV_PATH',
    default: 'none',
    what: "the KV v2 secret holding the keyspace's KEKs, within its mount, e.g. encryption/master_key (REKEY_KEY_PROVIDER=vault)",
    readBy: ALL,
  },
  {
    name: 'REKEY_VAULT_TRANSIT_MOUNT',
    default: 'transit',
    what: 'the Transit mount (REKEY_KEY_PROVIDER=vault-transit)',
    readBy: ALL,
  },
  {
    name: 'REKEY_VAULT_TRANSIT_KEY',
    default: 'none',
    what: "the keyspace's Transit key, e.g. rekey-prod (REKEY_KEY_PROVIDER=vault-transit)",
    readBy: ALL,
  },
  {
    name: 'REKEY_VAULT_TRANSIT_CONCURRENCY',
    default: '4',
    what: 'Transit calls in flight at once, a slice (1 to 64)',
    readBy: ALL,
    tunes: true,
  },
  {
    name: 'REKEY_VAULT_TRANSIT_RATE',
    default: '50',
    what: 'Transit calls started per second (0: no limit)',
    readBy: ALL,
    tunes: true,
  },
  {
    name: 'REKEY_VAULT_TRANSIT_BATCH',
    default: '250',
    what: 'items per Transit rewrap request, batch_input (1 to 10,000)',
    readBy: ALL,
    tunes: true,
  },
  { name: 'REKEY_METRICS_PORT', default: '9464', what: 'the port of /metrics (0: any free port)', readBy: ['worker'] },
  {
    name: 'REKEY_METRICS_HOST',
    default: '127.0.0.1',
    what: 'the interface /metrics listens on (0.0.0.0 for every one, e.g. in a container)',
    readBy: ['worker'],
  },
  {
    name: 'REKEY_TEMPORAL_METRICS_PORT',
    default: '9465',
    what: "the port of the Temporal SDK's own metrics on 127.0.0.1, appended to /metrics (0: off)",
    readBy: ['worker'],
  },
  {
    name: 'REKEY_CRYPTO_THREADS',
    default: 'one per core',
    what: "threads for the crypto of rewraps and of migrate-dek (0: in the activity's own thread)",
    readBy: ['worker'],
    tunes: true,
  },
  {
    name: 'REKEY_AES_GCM',
    default: 'auto',
    what: 'auto, native (the addon or an error) or node',
    readBy: ['worker'],
    tunes: true,
  },
  {
    name: 'REKEY_AES_GCM_ADDON',
    default: 'where npm run setup built it',
    what: 'the native AES-GCM addon',
    readBy: ['worker'],
    tunes: true,
  },
  {
    name: 'REKEY_MAX_CONCURRENT_ACTIVITIES',
    default: "the Temporal SDK's",
    what: 'activities this process runs at once',
    readBy: ['worker'],
    tunes: true,
  },
  {
    name: 'REKEY_NOTIFY_SECRET',
    default: 'none',
    what: "16+ characters that sign a schedule's notice webhook (needed only with --notify-url)",
    readBy: ['worker'],
  },
  {
    name: 'LOG_LEVEL',
    default: 'info',
    what: 'the JSON log level (trace, debug, info, warn, error)',
    readBy: ['worker'],
  },
  {
    name: 'REKEY_ADMIN_TOKEN',
    default: 'required',
    what: 'the bearer token callers must send, 16+ characters',
    readBy: ['admin'],
  },
  { name: 'REKEY_ADMIN_PORT', default: '8080', what: 'the port of the admin API', readBy: ['admin'] },
  { name: 'REKEY_ADMIN_HOST', default: '127.0.0.1', what: 'the interface the admin API listens on', readBy: ['admin'] },
  {
    name: 'REKEY_WEB_UI_URL',
    default: 'http://localhost:8233',
    what: "the Temporal Web UI, for the links rekey prints (and the admin API's web_ui_url)",
    readBy: ['admin', 'cli'],
  },
  { name: 'REKEY_TARGET', default: 'REKEY_DEFAULT_TARGET', what: "the CLI's --target", readBy: ['cli'] },
];

/** The worker's settings of how much or how fast (`tunes`): what a benchmark passes on to the workers it starts. */
export const WORKER_TUNING: readonly string[] = ENVIRONMENT.filter((v) => v.tunes && v.readBy.includes('worker')).map(
  (v) => v.name,
);

/** `--help` of a server process: what it is, how it is run, and every variable it reads with its default. */
export function processHelp(reader: Exclude<Reader, 'cli'>, summary: string, usage: string): string {
  const variables = ENVIRONMENT.filter((v) => v.readBy.includes(reader));
  const width = Math.max(...variables.map((v) => v.name.length));
  return [
    summary,
    '',
    `Usage: ${usage}`,
    '',
    'It reads its configuration from these environment variables:',
    '',
    ...variables.map((v) => `  ${v.name.padEnd(width)}  ${v.what} (default: ${v.default})`),
    '',
  ].join('\n');
}

const READER_NAMES: Record<Reader, string> = { worker: 'worker', admin: 'admin API', cli: 'CLI' };

/**
 * Every variable as a Markdown table (variable, default, read by, what), its columns padded as Prettier pads them:
 * the table of docs/08-production.md, which `npm run docs:env` writes and test/docs/env-table.test.ts checks.
 */
export function environmentTable(): string {
  const cell = (text: string) => text.replace(/\|/g, '\\|');
  const rows = [
    ['variable', 'default', 'read by', 'what'],
    ...ENVIRONMENT.map((v) => [
      `\`${v.name}\``,
      cell(v.default),
      v.readBy.map((reader) => READER_NAMES[reader]).join(', '),
      cell(v.what),
    ]),
  ];
  const widths = rows[0]!.map((_, column) => Math.max(3, ...rows.map((row) => row[column]!.length)));
  const line = (row: string[]) => `| ${row.map((text, column) => text.padEnd(widths[column]!)).join(' | ')} |`;
  return [
    line(rows[0]!),
    `| ${widths.map((width) => '-'.repeat(width)).join(' | ')} |`,
    ...rows.slice(1).map(line),
  ].join('\n');
}
