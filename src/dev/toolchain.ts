import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../project-paths';

export interface Toolchain {
  temporalCli: string;
  testServer: string;
  databaseUrl: string;
  cacheDir: string;
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

/** Paths written by `scripts/setup.mjs`; the demo, benchmark and chaos scripts read them. */
export function readToolchain(): Toolchain {
  const manifest = path.join(projectRoot, '.toolchain.json');
  if (!fs.existsSync(manifest)) throw new Error(`${manifest} is missing: run 'npm run setup' first`);
  return JSON.parse(fs.readFileSync(manifest, 'utf8')) as Toolchain;
}
