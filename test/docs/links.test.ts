// The README, docs/ and CONTRIBUTING link to each other by file and heading: an operator who follows a link lands on
// what it names. A heading's anchor is GitHub's: lower case, punctuation dropped, spaces as hyphens, a repeated heading
// numbered (-1, -2, …).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../../src/project-paths';
import { docPage } from '../helpers/readme';

const PAGES = [
  'README.md',
  'CONTRIBUTING.md',
  ...fs
    .readdirSync(path.join(projectRoot, 'docs'))
    .filter((name) => name.endsWith('.md'))
    .map((name) => `docs/${name}`),
];

/** The page without its fenced blocks (a `#` there is a shell comment, a `](…)` there is code). */
const prose = (page: string) => docPage(page).replace(/^([ \t]*)```[^\n]*\n[\s\S]*?^\1```[ \t]*$/gm, '');

function anchorsOf(page: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  for (const [, heading] of prose(page).matchAll(/^#{1,6}\s+(.+)$/gm)) {
    const slug = heading!
      .replace(/`/g, '')
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N} _-]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    anchors.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return anchors;
}

describe('links between the pages', () => {
  it('Finding: every link of the README, docs/ and CONTRIBUTING names a file that exists and, after #, a heading of it (docs/12 linked to two headings it does not have, docs/01 to one docs/08 does not have, CONTRIBUTING to ../bench/)', () => {
    const broken: string[] = [];
    for (const page of PAGES) {
      for (const [, link] of prose(page).matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(link!)) continue;
        const [file, anchor] = link!.split('#');
        const target = file ? path.posix.normalize(path.posix.join(path.posix.dirname(page), file)) : page;
        if (!fs.existsSync(path.join(projectRoot, target))) broken.push(`${page}: ${link} (no file ${target})`);
        else if (anchor !== undefined && target.endsWith('.md') && !anchorsOf(target).has(anchor))
          broken.push(`${page}: ${link} (no heading '${anchor}' in ${target})`);
      }
    }
    expect(broken).toEqual([]);
  });
});
