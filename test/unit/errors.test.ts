import { ActivityFailure, ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors';

const { errorKind, exitCodeFor, httpStatusFor, NON_RETRYABLE, RekeyError } = errors;

type ErrorClass = (new (...args: string[]) => errors.RekeyError) & { name: string };
const classes: ErrorClass[] = (Object.values(errors) as unknown[]).filter(
  (value): value is ErrorClass =>
    typeof value === 'function' && (value as { prototype: unknown }).prototype instanceof RekeyError,
);

describe('one errors module, one mapping to exit codes and HTTP statuses', () => {
  it('every error class carries its own name, which is the type Temporal gives its failures', () => {
    expect(classes.length).toBeGreaterThan(15);
    for (const Class of classes) {
      const instance = new Class('m', 'n', 'o', 'p');
      expect(instance.name).toBe(Class.name);
      expect(instance).toBeInstanceOf(Error);
    }
  });

  it('an activity retries none of them: a retry cannot fix what they report', () => {
    // The two that only clients raise (a CLI line, a run's failure read back) carry the kind they were given.
    const names = classes.map((c) => c.name).filter((n) => n !== 'CliError' && n !== 'RunFailedError');
    expect([...NON_RETRYABLE].sort()).toEqual(names.sort());
  });

  it('maps each kind to one exit code and one HTTP status', () => {
    const cases: [errors.RekeyError, number, number][] = [
      [new errors.InvalidRotationError('bad'), 2, 400],
      [new errors.RotationNotFoundError('none'), 3, 404],
      [new errors.RotationNotRunningError('ended'), 4, 409],
      [new errors.ControlRefusedError('retiring'), 4, 409],
      [new errors.KekFingerprintMismatchError('v2', 'kcv1:a', 'kcv1:b'), 5, 422],
      [new errors.RetireRefusedError('in use'), 5, 422],
      [new errors.DekUnwrapError('t', 'v1', 'auth'), 1, 500],
      [new errors.CliError('usage', 'invalid'), 2, 400],
      [new errors.RotationUnderWayError('rotating'), 4, 409],
      [new errors.RunFailedError('legacy values left', 'refused'), 5, 422],
      [new errors.RunFailedError('no answer', 'failed'), 1, 500],
    ];
    for (const [err, exit, status] of cases) {
      expect([err.name, exitCodeFor(err), httpStatusFor(err)]).toEqual([err.name, exit, status]);
    }
    expect(exitCodeFor(new Error('anything else'))).toBe(1);
  });

  it('a Temporal failure keeps the kind of the error it carries: activity errors and the workflow’s own types', () => {
    const fromActivity = new WorkflowFailedError(
      'workflow failed',
      new ActivityFailure(
        'activity failed',
        'retireKek',
        '1',
        undefined,
        undefined,
        ApplicationFailure.nonRetryable('still wraps 3 rows', 'RetireRefusedError'),
      ),
      undefined,
    );
    expect(errorKind(fromActivity)).toBe('refused');
    expect(exitCodeFor(fromActivity)).toBe(5);
    const own = new WorkflowFailedError('failed', errors.rotationFailure('FleetNotReady', 'deploy the key'), undefined);
    expect(errorKind(own)).toBe('failed');
    expect(errorKind(errors.rotationFailure('VerifyFailed', 'x'))).toBe('refused');
  });
});
