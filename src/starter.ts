#!/usr/bin/env node
// The `rekey` command: start, watch and steer KEK rotations. See `rekey --help`.
import { runCli } from './cli/program';

runCli(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`rekey: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
