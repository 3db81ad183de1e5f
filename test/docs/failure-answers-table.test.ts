// docs/10-exit-codes-and-statuses.md names each workflow failure type with its code, its kind and what to do next:
// the words an operator then sees after `next:` on every surface (the CLI's line and --json, rekey status --json, the
// admin API, the Web UI's details, the progress query). The page's table must say exactly what the code gives, so
// that the line an operator reads at the terminal is the line the page explains.
import { describe, expect, it } from 'vitest';
import { ERROR_ANSWERS, ERROR_CODES, errorKind, EXIT_CODES, HTTP_STATUSES, type ErrorKind } from '../../src/errors';
import { docTable } from '../helpers/readme';

const PAGE = 'docs/10-exit-codes-and-statuses.md';

/** The rows of the page's table of workflow failure types. */
function pageRows(): { type: string; code: string; kind: string; next: string }[] {
  return docTable(PAGE, 'type | code | kind | next').map(([type, code, kind, next]) => ({
    type: type!,
    code: code!,
    kind: kind!,
    next: next!,
  }));
}

describe(`the workflow failure types' table in ${PAGE}`, () => {
  it("Finding: the page's next column paraphrased what every surface says after 'next:' (FleetNotReady's without rekey override-fleet, VerifyFailed's without 'do not retire the old KEK by hand'); each row is now the type, code, kind and next step src/errors.ts gives, word for word", () => {
    // The workflow's failure types, then the client's errors named by a code of their own (NoVerdictError).
    expect(pageRows()).toEqual(
      Object.entries(ERROR_ANSWERS).map(([type, answer]) => ({
        type: `\`${type}\``,
        code: `\`${answer.error}\``,
        kind: errorKind({ type }),
        next: answer.next,
      })),
    );
  });

  it("Finding: the page's table of kinds gave each kind's exit code and HTTP status but not its code, the `error` an operator's script reads from the CLI's --json line and the admin API (bad_request, not_found, …); each row now gives the code, exit code and HTTP status src/errors.ts maps the kind to", () => {
    const kinds = Object.keys(ERROR_CODES) as ErrorKind[];
    expect(
      docTable(PAGE, 'kind | code | examples | exit | HTTP').map(([kind, code, , exit, http]) => ({
        kind,
        code,
        exit,
        http,
      })),
    ).toEqual(
      kinds.map((kind) => ({
        kind,
        code: `\`${ERROR_CODES[kind]}\``,
        exit: String(EXIT_CODES[kind]),
        http: String(HTTP_STATUSES[kind]),
      })),
    );
  });
});
