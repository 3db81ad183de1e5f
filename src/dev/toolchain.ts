import fs from 'node:fs';
import path from 'node:path';
import type { Toolchain } from '../../scripts/setup.mjs';
import { projectRoot } from '../project-paths';

/** The setup's manifest (`.toolchain.json`), declared once beside the setup itself (scripts/setup.d.mts). */
export type { Toolchain };

/** Paths written by `scripts/setup.mjs`; the demo, benchmark and chaos scripts read them. */
export function readToolchain(): Toolchain {
  const manifest = path.join(projectRoot, '.toolchain.json');
  if (!fs.existsSync(manifest)) throw new Error(`${manifest} is missing: run 'npm run setup' first`);
  return JSON.parse(fs.readFileSync(manifest, 'utf8')) as Toolchain;
}
