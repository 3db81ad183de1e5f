export interface Toolchain {
  temporalCli: string;
  testServer: string;
  databaseUrl: string;
  cacheDir: string;
  /** A Chromium or Chrome binary for the Web UI test, or why there is none. */
  chromium?: string;
  chromiumMissing?: string;
}
export type SetupStep = 'npm' | 'temporal-cli' | 'test-server' | 'postgres' | 'chromium';
export const TEMPORAL_CLI_VERSION: string;
export const TEST_SERVER_VERSION: string;
export class SetupError extends Error {}
export function setup(only?: SetupStep[]): Promise<Toolchain>;
export function readManifest(): Toolchain;
export function restartPostgres(): void;
