#!/usr/bin/env node
// The README's test command, several times in a row, with a busy process beside it: the suite must hold on a loaded
// machine (no test may depend on timing luck). `npm run test:load [-- --runs 3 --hogs 1]`.
// Each hog is a separate process spinning one core; each run's summary line is printed, and the exit code is 0 only
// if every run passed.
import { spawn } from 'node:child_process';
import os from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '3' }, hogs: { type: 'string', default: '1' } },
});
const runs = Number(values.runs);
const hogs = Number(values.hogs);
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(hogs) || hogs < 0) {
  process.stderr.write('usage: test-under-load [--runs N>=1] [--hogs N>=0]\n');
  process.exit(2);
}

const spinners = Array.from({ length: hogs }, () =>
  spawn(process.execPath, ['-e', 'for (;;) { Math.sqrt(Math.random()); }'], { stdio: 'ignore' }),
);
const stopHogs = () => spinners.forEach((hog) => hog.kill('SIGKILL'));
process.on('exit', stopHogs);
process.on('SIGINT', () => process.exit(130));

process.stdout.write(
  `test-under-load: ${runs} run(s) of 'npm test' beside ${hogs} busy process(es), ${os.cpus().length} cores\n`,
);
const results = [];
for (let run = 1; run <= runs; run++) {
  const started = Date.now();
  const { code, last } = await new Promise((resolve) => {
    const child = spawn('npm', ['test'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let tail = '';
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk);
      tail = (tail + chunk.toString()).slice(-4000);
    });
    child.on('exit', (exitCode) => {
      const lines = tail.trim().split('\n');
      resolve({ code: exitCode, last: lines[lines.length - 1] ?? '' });
    });
  });
  const seconds = Math.round((Date.now() - started) / 1000);
  results.push({ run, code, last, seconds });
  process.stdout.write(`\ntest-under-load: run ${run}/${runs}: exit ${code} in ${seconds}s: ${last}\n`);
}
stopHogs();
process.stdout.write('\ntest-under-load summary\n');
for (const r of results) process.stdout.write(`  run ${r.run}: exit ${r.code}, ${r.seconds}s, ${r.last}\n`);
process.exit(results.every((r) => r.code === 0) ? 0 : 1);
