import { describe, expect, it } from 'vitest';
import {
  checkAgainstKeks,
  effectiveRestoreWindowMs,
  parseRotationRequest,
  refuseShortRestoreWindow,
  type KekFacts,
  type RotationRequest,
} from '../../src/rotation/rotation-input';
import { InvalidRotationError } from '../../src/errors';

const facts = (overrides: Partial<KekFacts> = {}): KekFacts => ({
  activeKekId: 'v1',
  from: { registryState: 'active', inProvider: true },
  to: { registryState: undefined, inProvider: true },
  providerCanGenerate: false,
  providerDescription: 'the test provider',
  ...overrides,
});

describe('rotation request', () => {
  it('fills in the documented defaults', () => {
    expect(parseRotationRequest({ from: 'v1', to: 'v2' })).toEqual({
      target: 'rekey',
      from: 'v1',
      to: 'v2',
      batchSize: 2_000,
      parallelism: 2,
      gracePeriodMs: 7 * 86_400_000,
      dryRun: false,
      tenantId: undefined,
      maxPasses: 5,
      sliceTimeBudgetMs: 30_000,
      fleetTimeoutMs: 3_600_000,
      fleetLiveWithinMs: 120_000,
      confirmTimeoutMs: 3 * 86_400_000,
      maxHistoryEvents: 10_000,
      minKekAgeMs: 0,
      restoreWindowMs: 30 * 24 * 3600 * 1000,
    });
  });

  it.each([
    [{ from: 'v1', to: 'v1' }, "from and to are both 'v1'"],
    [{ from: 'v 1', to: 'v2' }, "from 'v 1' is not a KEK id"],
    [{ from: 'v1', to: '' }, "to '' is not a KEK id"],
    [{ from: 'v1', to: 'v2', parallelism: 0 }, 'parallelism must be a whole number from 1 to 64, got 0'],
    [{ target: 'Talos', from: 'v1', to: 'v2' }, "target 'Talos' is not a target name"],
    [{ from: 'v1', to: 'v2', batchSize: 2.5 }, 'batchSize must be a whole number from 1 to 50000, got 2.5'],
    [{ from: 'v1', to: 'v2', gracePeriod: '7 fortnights' }, "gracePeriod '7 fortnights' is not a duration"],
    [{ from: 'v1', to: 'v2', tenantId: '' }, 'tenantId must not be empty'],
  ])('refuses %j: %s', (request, message) => {
    expect(() => parseRotationRequest(request)).toThrow(InvalidRotationError);
    expect(() => parseRotationRequest(request)).toThrow(message);
  });

  it('the retire step raises a restore window below the minimum of 1d to 1d unless the reason is given; a window of 1d or more is kept', () => {
    const day = 86_400_000;
    expect(effectiveRestoreWindowMs(0, undefined)).toBe(day);
    expect(effectiveRestoreWindowMs(23 * 3_600_000, '  ')).toBe(day);
    expect(effectiveRestoreWindowMs(0, 'test: destroy at once')).toBe(0);
    expect(effectiveRestoreWindowMs(30 * day, undefined)).toBe(30 * day);
  });

  const windowCheck = (request: RotationRequest) => () =>
    refuseShortRestoreWindow(request, parseRotationRequest(request));

  it.each([
    ['0s', 'as soon as it is retired'],
    ['23h', '23h after it is retired'],
  ])(
    'a rotation that retires a KEK refuses a restore window of %s, below the minimum of 1d (the KEK would be destroyed %s)',
    (restoreWindow, when) => {
      const check = windowCheck({ from: 'v1', to: 'v2', restoreWindow });
      expect(check).toThrow(InvalidRotationError);
      expect(check).toThrow(
        `restore window '${restoreWindow}' (rekey rotate --restore-window, restore_window in the admin API) is shorter than the minimum of 1d: the retired KEK would be destroyed ${when}`,
      );
    },
  );

  it('a restore window of 1d or more, or below it with the reason (allowShortRestoreWindow), is accepted; a dry run and a canary retire nothing and are not checked', () => {
    expect(windowCheck({ from: 'v1', to: 'v2', restoreWindow: '1d' })).not.toThrow();
    expect(windowCheck({ from: 'v1', to: 'v2' })).not.toThrow();
    expect(
      windowCheck({ from: 'v1', to: 'v2', restoreWindow: '0s', allowShortRestoreWindow: 'staging' }),
    ).not.toThrow();
    expect(windowCheck({ from: 'v1', to: 'v2', restoreWindow: '0s', allowShortRestoreWindow: '  ' })).toThrow(
      InvalidRotationError,
    );
    expect(windowCheck({ from: 'v1', to: 'v2', restoreWindow: '0s', dryRun: true })).not.toThrow();
    expect(windowCheck({ from: 'v1', to: 'v2', restoreWindow: '0s', tenantId: 't-1' })).not.toThrow();
  });

  it('from=current to the active KEK is already done when no older KEK still wraps a row, and takes up the rows an earlier run left otherwise', () => {
    const request = parseRotationRequest({ from: 'current', to: 'v2' });
    const onV2 = { activeKekId: 'v2', to: { registryState: 'active' as const, inProvider: true } };
    expect(checkAgainstKeks(request, facts(onV2))).toEqual({
      from: 'v2',
      alreadyDone: "'v2' is already the active KEK and no older KEK still wraps a row: nothing left to rotate",
    });
    expect(checkAgainstKeks(request, facts({ ...onV2, unfinished: { kekId: 'v1', rows: 3 } }))).toEqual({
      from: 'v1',
      to: 'v2',
      resumes: true,
    });
    // Named explicitly, the same KEK twice is still bad input.
    expect(() => parseRotationRequest({ from: 'v2', to: 'v2' })).toThrow("from and to are both 'v2'");
  });

  it('resolves from=current to the active KEK', () => {
    expect(checkAgainstKeks(parseRotationRequest({ from: 'current', to: 'v2' }), facts())).toEqual({ from: 'v1' });
  });

  it.each([
    ['a source that is not active', { activeKekId: 'v0' }, "'v1' is not the KEK in use (the active KEK is 'v0')"],
    [
      'an unknown source',
      { from: { inProvider: false } },
      "unknown KEK 'v1': neither the registry nor the test provider holds it",
    ],
    [
      'a source the provider lacks',
      { from: { registryState: 'active', inProvider: false } },
      "KEK 'v1' is not in the test provider",
    ],
    ['a retired target', { to: { registryState: 'retired', inProvider: true } }, "KEK 'v2' is retired"],
    ['an unknown target', { to: { inProvider: false } }, "unknown KEK 'v2': the test provider does not hold it"],
    ['no active KEK at all', { activeKekId: undefined }, "'v1' is not the KEK in use (the active KEK is 'none')"],
  ])('refuses %s', (_what, overrides, message) => {
    expect(() => checkAgainstKeks(parseRotationRequest({ from: 'v1', to: 'v2' }), facts(overrides))).toThrow(message);
  });

  it('takes up a rotation aborted after its promotion: to active, from decrypt-only', () => {
    const settings = parseRotationRequest({ from: 'v1', to: 'v2' });
    expect(
      checkAgainstKeks(
        settings,
        facts({ activeKekId: 'v2', from: { registryState: 'decrypt_only', inProvider: true } }),
      ),
    ).toEqual({ from: 'v1', resumes: true });
    expect(() =>
      checkAgainstKeks(settings, facts({ activeKekId: 'v2', from: { registryState: 'retired', inProvider: true } })),
    ).toThrow("'v1' is not the KEK in use (the active KEK is 'v2')");
  });

  it('says already done when the registry shows from retired and to active, even without from in the provider', () => {
    const settings = parseRotationRequest({ from: 'v1', to: 'v2' });
    expect(
      checkAgainstKeks(
        settings,
        facts({
          activeKekId: 'v2',
          from: { registryState: 'retired', inProvider: false },
          to: { registryState: 'active', inProvider: true },
        }),
      ),
    ).toEqual({ from: 'v1', alreadyDone: "already done: 'v1' is retired and 'v2' is the active KEK" });
  });

  it("takes 'current' to an unfinished rotation first, so that its rows are not stranded on a decrypt-only KEK", () => {
    const settings = parseRotationRequest({ from: 'current', to: 'new' });
    expect(checkAgainstKeks(settings, facts({ activeKekId: 'v2', unfinished: { kekId: 'v1', rows: 1_200 } }))).toEqual({
      from: 'v1',
      to: 'v2',
      resumes: true,
    });
  });

  it("accepts 'new' only where the provider can generate", () => {
    const settings = parseRotationRequest({ from: 'v1', to: 'new' });
    expect(() => checkAgainstKeks(settings, facts())).toThrow('the test provider cannot generate KEKs');
    expect(checkAgainstKeks(settings, facts({ providerCanGenerate: true }))).toEqual({ from: 'v1' });
  });
});
