// Every error a rotation can end with, on every surface, from the one mapping (errorAnswer in src/errors.ts): the CLI's
// plain and --json lines, `rekey status --json`, the admin API (its error body and a failed run's status), the Web UI's
// details of the run and its progress query say the same kind, the same message and the same next step.
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { RetryState } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { errorReply } from '../../src/admin/server';
import { failureFields } from '../../src/admin/schemas';
import { cliErrorOutput } from '../../src/cli/program';
import * as errors from '../../src/errors';
import { initialProgress, report } from '../../src/rotation/progress';
import { failedDetails } from '../../src/rotation/web-ui';

const { RekeyError, ERROR_ANSWERS, ERROR_CODES, EXIT_CODES, HTTP_STATUSES, WORKFLOW_FAILURES } = errors;

type ErrorClass = (new (...args: string[]) => errors.RekeyError) & { name: string; kind: errors.ErrorKind };
// Every class of the module but the two that only clients raise, with the kind they were given (CliError, RunFailedError).
const classes = (Object.values(errors) as unknown[]).filter(
  (value): value is ErrorClass =>
    typeof value === 'function' &&
    (value as { prototype: unknown }).prototype instanceof RekeyError &&
    value !== errors.CliError &&
    value !== errors.RunFailedError,
);

interface Case {
  type: string;
  kind: errors.ErrorKind;
  message: string;
  /** The error as thrown where it happened (an activity's class, the workflow's own failure). */
  thrown: Error;
}

const cases: Case[] = [
  ...classes.map((Class) => {
    const thrown = new Class('v1', 'kcv1:a', 'kcv1:b', 'the reason');
    return { type: Class.name, kind: Class.kind, message: thrown.message, thrown };
  }),
  ...(Object.entries(WORKFLOW_FAILURES) as [errors.WorkflowFailureType, errors.ErrorKind][]).map(([type, kind]) => ({
    type,
    kind,
    message: `the ${type} message`,
    thrown: errors.rotationFailure(type, `the ${type} message`),
  })),
];

describe('what every surface says of each error a rotation can end with', () => {
  it('covers every class of src/errors.ts and every workflow failure type', () => {
    expect(cases.map((c) => c.type)).toEqual(
      expect.arrayContaining([
        'ApplicationNotReady',
        'FleetNotReady',
        'RetireRefusedError',
        'DatabaseUnreachableError',
        'NoVerdictError',
      ]),
    );
    expect(cases.length).toBe(classes.length + Object.keys(WORKFLOW_FAILURES).length);
  });

  it.each(cases.map((c) => [c.type, c] as const))(
    '%s: the same code, kind, message and next step on the CLI (plain and --json), rekey status, the admin API, the Web UI and the progress query',
    (_type, { type, kind, message, thrown }) => {
      const named = Object.hasOwn(ERROR_ANSWERS, type) ? ERROR_ANSWERS[type] : undefined;
      // A workflow failure type (and a client's error of ERROR_ANSWERS) is named by its own code; every other error by
      // its kind's.
      const code = named?.error ?? ERROR_CODES[kind];
      const next = named?.next;
      const withNext = next === undefined ? {} : { next };

      // In the workflow: an activity's error reaches it as an ApplicationFailure of its class's type, non-retryable
      // (explainFailure); the workflow's own failures are thrown as they are. The run holds it as its progress says.
      const inWorkflow =
        thrown instanceof RekeyError ? ApplicationFailure.nonRetryable(thrown.message, thrown.name) : thrown;
      const held = errors.runFailure(inWorkflow);
      expect(held).toEqual({ type, kind, error: code, message, ...withNext });

      // A client reads the run's failure back from Temporal.
      const read = new WorkflowFailedError('Workflow execution failed', inWorkflow, RetryState.NON_RETRYABLE_FAILURE);
      const status = errors.failureOf(read);
      expect(status).toEqual({ failure: message, failureKind: kind, failureType: type, error: code, ...withNext });

      // rekey status / --wait: the run's end, as the CLI exits with it.
      const end = new errors.CliError(`rotation r@1 failed: ${status.failure}`, status.failureKind, status.failureType);
      const json = cliErrorOutput(end, true);
      expect(json.exit).toBe(EXIT_CODES[kind]);
      expect(JSON.parse(json.stderr)).toEqual({
        error: code,
        kind,
        message: `rotation r@1 failed: ${message.split('\n')[0]}`,
        ...withNext,
        exit: EXIT_CODES[kind],
      });
      const plain = cliErrorOutput(end, false);
      expect(plain).toEqual({
        stderr: `rekey: rotation r@1 failed: ${message.split('\n')[0]}${next === undefined ? '' : ` (${code}; next: ${next})`}\n`,
        exit: EXIT_CODES[kind],
      });

      // The admin API: a failed run's status, and the error body of a request the failure answers.
      expect(failureFields(status)).toEqual({ error: code, error_kind: kind, error_type: type, ...withNext });
      const reply = errorReply(read);
      expect(reply.status).toBe(HTTP_STATUSES[kind]);
      expect(reply.body).toEqual({ error: code, message, ...withNext });

      // The CLI and the admin API of the error itself, where it is thrown in the client (a refusal read at once).
      if (thrown instanceof RekeyError) {
        expect(JSON.parse(cliErrorOutput(thrown, true).stderr)).toMatchObject({ error: code, kind });
        expect(errorReply(thrown)).toMatchObject({ status: HTTP_STATUSES[kind], body: { error: code, message } });
      }

      // The Web UI's details of the run.
      const details = failedDetails(report(initialProgress('v1', 'v2', false, 0, 'talos'), 0), held, 'wf').split(
        '\n\n',
      );
      expect(details.slice(0, next === undefined ? 2 : 3)).toEqual([
        `**Failed:** ${message}`,
        `**Error:** \`${code}\` (${kind})`,
        ...(next === undefined ? [] : [`**Next:** ${next}`]),
      ]);
    },
  );
});
