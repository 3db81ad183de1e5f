#!/usr/bin/env node
// Writes the table of every environment variable into docs/08-production.md, between its env-vars markers, from
// src/env-vars.ts as compiled into dist/ (run through `npm run docs:env`, which compiles first).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { environmentTable } = createRequire(import.meta.url)(path.join(root, 'dist/src/env-vars.js'));
const page = path.join(root, 'docs/08-production.md');
const text = fs.readFileSync(page, 'utf8');
const begin = '<!-- env-vars:begin -->';
const end = '<!-- env-vars:end -->';
const from = text.indexOf(begin);
const to = text.indexOf(end);
if (from < 0 || to < from) throw new Error(`${page} has no ${begin} … ${end} markers`);
fs.writeFileSync(page, `${text.slice(0, from + begin.length)}\n\n${environmentTable()}\n\n${text.slice(to)}`);
process.stdout.write(`wrote the table of environment variables into ${path.relative(root, page)}\n`);
