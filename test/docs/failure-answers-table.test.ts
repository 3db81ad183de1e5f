// docs/10-exit-codes-and-statuses.md names each workflow failure type with its code, its kind and what to do next:
// the words an operator then sees after `next:` on every surface (the CLI's line and --json, rekey status --json, the
// admin API, the Web UI's details, the progress query). The page's table must say exactly what the code gives, so
// that the line an operator reads at the terminal is the line the page explains.
import { describe, expect, it } from 'vitest';
import { WORKFLOW_FAILURE_ANSWERS, WORKFLOW_FAILURES, type WorkflowFailureType } from '../../src/errors';
import { docPage } from '../helpers/readme';

const PAGE = 'docs/10-exit-codes-and-statuses.md';

/** The rows of the page's table headed `| type | code | kind | next |`, as written. */
function pageRows(): { type: string; code: string; kind: string; next: string }[] {
  const lines = docPage(PAGE).split('\n');
  const cells = (line: string) =>
    line
      .slice(1, -1)
      .split('|')
      .map((cell) => cell.trim());
  const header = lines.findIndex((line) => line.startsWith('|') && cells(line).join(',') === 'type,code,kind,next');
  if (header < 0) throw new Error(`${PAGE} has no table headed 'type | code | kind | next'`);
  const rows = [];
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith('|')) break;
    const [type, code, kind, next] = cells(line) as [string, string, string, string];
    rows.push({ type, code, kind, next });
  }
  return rows;
}

describe(`the workflow failure types' table in ${PAGE}`, () => {
  it("Finding: the page's next column paraphrased what every surface says after 'next:' (FleetNotReady's without rekey override-fleet, VerifyFailed's without 'do not retire the old KEK by hand'); each row is now the type, code, kind and next step src/errors.ts gives, word for word", () => {
    const types = Object.keys(WORKFLOW_FAILURES) as WorkflowFailureType[];
    expect(pageRows()).toEqual(
      types.map((type) => ({
        type: `\`${type}\``,
        code: `\`${WORKFLOW_FAILURE_ANSWERS[type].error}\``,
        kind: WORKFLOW_FAILURES[type],
        next: WORKFLOW_FAILURE_ANSWERS[type].next,
      })),
    );
  });
});
