// The commands the README and docs/ give inside prose (`…` spans that start with a command an operator types), which
// the docs harness (test/docs/run-docs.test.ts) does not run: it runs fenced shell blocks only. For each, whether a
// test file holds the exact text (`exact`), only its first three words (`prefix`: a test runs that command, perhaps
// not as written), or neither (`none`). A report to read, not a test: a placeholder (`<id>`) or a table row that a
// test reads from the page (docs/10 by test/surfaces/exit-codes.test.ts, docs/02's migration controls by
// test/docs/migration-cli-controls.test.ts) shows as `prefix` or `none`.
//
//   node scripts/docs-inline-commands.mjs [--only none|prefix|exact]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const COMMAND =
  /^(rekey|temporal|tctl|aws|curl|vault|psql|npm|node|createdb|dropdb|openssl|docker|promtool|kubectl|pg_dump|npx)\s/;

function files(dir, suffix) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return files(full, suffix);
    return entry.name.endsWith(suffix) ? [full] : [];
  });
}

const tests = files(path.join(root, 'test'), '.ts')
  .map((file) => fs.readFileSync(file, 'utf8'))
  .join('\n');
const pages = ['README.md', ...files(path.join(root, 'docs'), '.md').map((file) => path.relative(root, file))];
const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined;

const counts = { exact: 0, prefix: 0, none: 0 };
for (const page of pages.sort()) {
  let fenced = false;
  // The page with its fenced blocks blanked (the harness runs those), line numbers kept.
  const prose = fs
    .readFileSync(path.join(root, page), 'utf8')
    .split('\n')
    .map((line) => {
      if (/^\s*```/.test(line)) {
        fenced = !fenced;
        return '';
      }
      return fenced ? '' : line;
    })
    .join('\n');
  for (const match of prose.matchAll(/`([^`]+)`/g)) {
    const span = match[1].replace(/\s*\n\s*/g, ' ').trim();
    if (!COMMAND.test(span) || span.split(' ').length < 2) continue;
    const line = prose.slice(0, match.index).split('\n').length;
    const ran = tests.includes(span)
      ? 'exact'
      : tests.includes(span.split(' ').slice(0, 3).join(' '))
        ? 'prefix'
        : 'none';
    counts[ran]++;
    if (only === undefined || only === ran) console.log(`${ran}\t${page}:${line}\t${span}`);
  }
}
console.error(`inline commands: ${counts.exact} exact, ${counts.prefix} prefix, ${counts.none} none`);
