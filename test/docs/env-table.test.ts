// Issue 25, "A guide that starts from the operator's database": docs/08-production.md has a table of every
// environment variable every binary reads, with its default. It is written from src/env-vars.ts; this test fails
// when the page's table and that list differ, and when the sources read a variable the page's table lacks.
import { describe, expect, it } from 'vitest';
import { ENVIRONMENT, environmentTable } from '../../src/env-vars';
import { variablesRead, documentedAs } from '../helpers/env-read';
import { docPage } from '../helpers/readme';

const PAGE = 'docs/08-production.md';

/** The page's table between its env-vars markers, as written. */
function pageTable(): string {
  const text = docPage(PAGE);
  const match = /<!-- env-vars:begin -->\n([\s\S]*?)<!-- env-vars:end -->/.exec(text);
  if (!match) throw new Error(`${PAGE} has no <!-- env-vars:begin --> … <!-- env-vars:end --> table`);
  return match[1]!.trim();
}

/** The variable names in the first column of the page's table. */
function pageVariables(): Set<string> {
  const rows = pageTable().split('\n').slice(2);
  return new Set(rows.map((row) => /^\| `([^`]+)`/.exec(row)?.[1] ?? `unparsed row: ${row}`));
}

describe(`the table of every environment variable in ${PAGE}`, () => {
  it('is the table src/env-vars.ts gives, row for row (npm run docs:env rewrites it)', () => {
    expect(pageTable()).toBe(environmentTable());
    expect([...pageVariables()]).toEqual(ENVIRONMENT.map((v) => v.name));
  });

  it('lists every variable the sources read, with a default', () => {
    const listed = pageVariables();
    const missing = variablesRead().filter((name) => documentedAs(name, listed) === undefined);
    expect(missing, `variables the code reads that ${PAGE} lacks`).toEqual([]);
    for (const row of pageTable().split('\n').slice(2)) expect(row.split('|')[2]!.trim()).not.toBe('');
  });
});
