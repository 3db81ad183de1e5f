export interface Toolchain {
  temporalCli: string;
  testServer: string;
  databaseUrl: string;
  cacheDir: string;
  /** moto's standalone server (AWS Secrets Manager and KMS for the tests), in a virtual environment. */
  motoServer: string;
  /** The AWS CLI (v1, pinned), in a virtual environment of its own: the docs tests run the pages' `aws` lines with it. */
  awsCli: string;
  /** HashiCorp Vault built from source, for the Vault tests' dev servers (src/dev/vault.ts). */
  vault: string;
  /** tctl built from source, Temporal's older CLI as operators use it. */
  tctl: string;
  /** A Chromium or Chrome binary for the Web UI test, or why there is none. */
  chromium?: string;
  chromiumMissing?: string;
  /** Prometheus's promtool, for the alert rules' tests, or why there is none. */
  promtool?: string;
  promtoolMissing?: string;
  /** The native AES-GCM addon built by cargo, or why there is none (rekey then uses Node's AES-GCM). */
  aesGcmAddon?: string;
  aesGcmAddonMissing?: string;
}
export type SetupStep =
  | 'npm'
  | 'temporal-cli'
  | 'test-server'
  | 'postgres'
  | 'moto'
  | 'awscli'
  | 'vault'
  | 'tctl'
  | 'chromium'
  | 'promtool'
  | 'aes-gcm';
export const TEMPORAL_CLI_VERSION: string;
export const VAULT_VERSION: string;
export const TCTL_VERSION: string;
export const TEST_SERVER_VERSION: string;
export class SetupError extends Error {}
export function setup(only?: SetupStep[]): Promise<Toolchain>;
export function readManifest(): Toolchain;
export function restartPostgres(): void;
