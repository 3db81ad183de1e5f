// The fenced blocks of a documentation page, with the marker an HTML comment before one may give: what the docs
// harness (test/docs/run-docs.test.ts) runs, and how.
import { docPage } from './readme';

export type FenceMarker =
  /** A long-running command (a server, a worker): run in the background; ready once its output contains `ready`. */
  | { kind: 'background'; ready: string }
  /** A command an operator runs again until its output contains `text` (a run that gets to a step by itself). */
  | { kind: 'until'; text: string }
  /** Commands run by another test or by CI, named in `by` (the README's `npm run demo` and `npm test`). */
  | { kind: 'elsewhere'; by: string }
  /** Not before a fence: the operator stops (Ctrl-C) the background command that contains `command`. */
  | { kind: 'stop'; command: string };

export interface Fence {
  page: string;
  /** 1-based line of the opening fence. */
  line: number;
  lang: string;
  text: string;
  marker?: FenceMarker;
}

export const SHELL_LANGUAGES = ['sh', 'bash', 'shell', 'console', 'zsh'];

/** `<!-- docs: background, ready when "…" -->`, `<!-- docs: until "…" -->`, `<!-- docs: run by … -->`. */
export function parseMarker(comment: string): FenceMarker | undefined {
  const body = /^<!--\s*docs:\s*(.*?)\s*-->$/.exec(comment.trim())?.[1];
  if (body === undefined) return undefined;
  let m = /^background, ready when "(.+)"$/.exec(body);
  if (m) return { kind: 'background', ready: m[1]! };
  m = /^until "(.+)"$/.exec(body);
  if (m) return { kind: 'until', text: m[1]! };
  m = /^stop "(.+)"$/.exec(body);
  if (m) return { kind: 'stop', command: m[1]! };
  m = /^run by (.+)$/.exec(body);
  if (m) return { kind: 'elsewhere', by: m[1]! };
  throw new Error(`unknown docs marker: ${comment}`);
}

/**
 * Every fenced block of `page` in order, indented ones (in list items) included, their indent removed; a `stop`
 * marker on its own is a block of language `stop` with no text.
 */
export function pageFences(page: string): Fence[] {
  const lines = docPage(page).split('\n');
  const fences: Fence[] = [];
  for (let i = 0; i < lines.length; i++) {
    const stop = lines[i]!.trim().startsWith('<!-- docs: stop') ? parseMarker(lines[i]!) : undefined;
    if (stop) fences.push({ page, line: i + 1, lang: 'stop', text: '', marker: stop });
    const open = /^(\s*)```(\S*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const indent = open[1]!.length;
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && lines[j]!.trim() !== '```') body.push(lines[j++]!.slice(indent));
    if (j >= lines.length) throw new Error(`${page}:${i + 1}: a fence that is never closed`);
    let k = i - 1;
    while (k >= 0 && lines[k]!.trim() === '') k--;
    const before = k >= 0 && lines[k]!.trim().startsWith('<!-- docs:') ? parseMarker(lines[k]!) : undefined;
    const marker = before?.kind === 'stop' ? undefined : before;
    fences.push({ page, line: i + 1, lang: open[2]!, text: body.join('\n'), ...(marker && { marker }) });
    i = j;
  }
  return fences;
}
