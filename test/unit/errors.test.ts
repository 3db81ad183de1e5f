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
    // The two that only clients raise (a CLI line, a run's failure read back) carry the kind they were given; the
    // database's unreachability is the one a retry fixes (once it answers).
    const names = classes
      .map((c) => c.name)
      .filter((n) => n !== 'CliError' && n !== 'RunFailedError' && n !== 'DatabaseUnreachableError');
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

  it('a database that is unreachable (refused, ended, silent, a login refused) is 503 and exit 1, from the driver’s errors; any other database error is not', () => {
    const refused = errors.markDatabaseUnreachable(
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }),
    );
    const timedOut = new Error('Connection terminated due to connection timeout', {
      cause: new Error('timeout expired'),
    });
    const pgError = (code: string, message: string) => Object.assign(new Error(message), { code, severity: 'FATAL' });
    for (const err of [
      refused,
      timedOut,
      new Error('Connection terminated unexpectedly'),
      new Error('timeout exceeded when trying to connect'),
      pgError('57P01', 'terminating connection due to administrator command'),
      pgError('28000', 'role "admin" is not permitted to log in'),
      pgError('08006', 'connection failure'),
      new errors.DatabaseUnreachableError('no answer'),
    ]) {
      expect([err.message, errorKind(err), exitCodeFor(err), httpStatusFor(err)]).toEqual([
        err.message,
        'unavailable',
        1,
        503,
      ]);
      expect(errors.databaseUnreachable(err)?.message).toMatch(
        /^the database is unreachable \(.+\): retry once it answers$/,
      );
    }
    expect(errors.databaseUnreachable(refused)?.message).toBe(
      'the database is unreachable (connect ECONNREFUSED 127.0.0.1:5432): retry once it answers',
    );
    // Unmarked socket errors (another service's) and PostgreSQL's other errors keep their kind.
    for (const err of [
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:4566'), { code: 'ECONNREFUSED' }),
      pgError('42P01', 'relation "x" does not exist'),
      Object.assign(new Error('57P01'), { code: '57P01' }),
    ]) {
      expect([err.message, errorKind(err), httpStatusFor(err)]).toEqual([err.message, 'failed', 500]);
    }
    // A rekey error of its own kind keeps it, whatever its cause says.
    expect(errorKind(new errors.RunFailedError('refused', 'refused'))).toBe('refused');
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
