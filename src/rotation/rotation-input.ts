import { TARGET_NAME } from '../targets/target';
import { parseDuration } from './durations';
import { parseKeyspaceId } from './identity';
import { InvalidRotationError } from '../errors';

/**
 * The target KEK as an operator is told it: its id, or, for a request that generates one (`to: 'new'`) before
 * provision has chosen the id, that it is a new KEK. 'new' is a request, never a KEK's name.
 */
export function describeTargetKek(to: string, quote: (id: string) => string = (id) => `'${id}'`): string {
  return to === 'new' ? 'a new KEK (id chosen at provision)' : quote(to);
}

/** What an operator asks for. KEK ids only: key bytes never travel in a workflow payload. */
export interface RotationRequest {
  /** The keyspace to rotate: a target name (default 'rekey', rekey's own table). */
  target?: string;
  /**
   * The keyspace the target was when the run was started (`<database id>/<schema.table>`, as the starter's database
   * said): every step checks that its worker's target is that keyspace. Absent in runs started by hand or by builds
   * before keyspaces: the first step then says which keyspace it is.
   */
  keyspace?: string;
  /** The KEK in use now ('current' = whatever the registry says is active when the run starts). */
  from: string;
  /** The KEK to rotate to, or 'new' to generate one where the key provider can. */
  to: string;
  batchSize?: number;
  parallelism?: number;
  /** How long the old KEK stays decrypt-only before it is retired, e.g. '7d' (default). */
  gracePeriod?: string;
  dryRun?: boolean;
  /** Canary: rewrap one tenant under the new KEK, verify it, and stop (no promote, no retire). */
  tenantId?: string;
  /** Full passes over what is still stale before the run gives up and names the tenants left. */
  maxPasses?: number;
  /** Longest a slice activity runs before handing back a cursor (keeps pause and abort prompt). */
  sliceTimeBudget?: string;
  /** How long promotion waits for every live application instance; then it fails (override: update). */
  fleetTimeout?: string;
  /** An instance is live if it announced itself within this window. */
  fleetLiveWithin?: string;
  /**
   * How long a step the application owns (promotion, retirement of a target whose application picks its own current
   * KEK) waits for its evidence or an operator's confirmation before the run fails, saying what it waited for.
   */
  confirmTimeout?: string;
  /** Continue-as-new after this many history events even if the server does not suggest it (tests). */
  maxHistoryEvents?: number;
  /** Do nothing (and say so) if the active KEK was promoted less than this long ago: for schedules. */
  minKekAge?: string;
  /**
   * Rotate although the target's fields still hold legacy values encrypted directly by the KEK (they become
   * unreadable once it is retired): the operator's reason, recorded in the run. Without it such a rotation is refused.
   */
  allowLegacyValues?: string;
  /**
   * How long a retired KEK keeps its material and may be restored (`rekey keys restore`), e.g. '30d' (default); a
   * durable step destroys it in its store afterwards.
   */
  restoreWindow?: string;
  /**
   * A restore window shorter than MIN_RESTORE_WINDOW (down to 0s: destroyed as soon as the window's step runs): the
   * operator's reason, recorded in the run. Without it such a rotation is refused.
   */
  allowShortRestoreWindow?: string;
}

export interface RotationSettings {
  target: string;
  from: string;
  to: string;
  batchSize: number;
  parallelism: number;
  gracePeriodMs: number;
  dryRun: boolean;
  tenantId: string | undefined;
  maxPasses: number;
  sliceTimeBudgetMs: number;
  fleetTimeoutMs: number;
  fleetLiveWithinMs: number;
  confirmTimeoutMs: number;
  maxHistoryEvents: number;
  minKekAgeMs: number;
  restoreWindowMs: number;
}

export const DEFAULTS = {
  batchSize: 2_000,
  parallelism: 2,
  gracePeriod: '7d',
  maxPasses: 5,
  sliceTimeBudget: '30s',
  fleetTimeout: '1h',
  fleetLiveWithin: '2m',
  confirmTimeout: '3d',
  maxHistoryEvents: 10_000,
  restoreWindow: '30d',
} as const;

/**
 * The shortest restore window a rotation that retires a KEK takes without the operator's reason: a retired KEK is
 * destroyed once its window ends, with no way back, so the window is the time left to notice that something still
 * needs it (an application failing to open its DEKs, a replica, a backup) and restore it (rekey keys restore).
 */
export const MIN_RESTORE_WINDOW = '1d';

/**
 * The restore window the retire step applies: `restoreWindowMs`, raised to MIN_RESTORE_WINDOW unless `reason` (the
 * request's allowShortRestoreWindow) is given. Where the window is written, for every run: one validated before the
 * minimum existed (in flight across the upgrade, continued as new, reset past validate) carries a shorter window and
 * no reason in its own state.
 */
export function effectiveRestoreWindowMs(restoreWindowMs: number, reason: string | undefined): number {
  const minimum = parseDuration(MIN_RESTORE_WINDOW)!;
  if (restoreWindowMs >= minimum || (reason !== undefined && reason.trim() !== '')) return restoreWindowMs;
  return minimum;
}

/**
 * Refuses a rotation that retires a KEK (neither a dry run nor a canary) with a restore window below
 * MIN_RESTORE_WINDOW, unless the request gives the reason to go below it (allowShortRestoreWindow). Checked where a
 * rotation starts (startRotation, validate), never when a run is replayed or continues as new.
 */
export function refuseShortRestoreWindow(request: RotationRequest, settings: RotationSettings): void {
  if (settings.dryRun || settings.tenantId !== undefined) return;
  if (settings.restoreWindowMs >= parseDuration(MIN_RESTORE_WINDOW)!) return;
  if (request.allowShortRestoreWindow !== undefined && request.allowShortRestoreWindow.trim() !== '') return;
  const window = request.restoreWindow ?? DEFAULTS.restoreWindow;
  const destroyed = settings.restoreWindowMs === 0 ? 'as soon as it is retired' : `${window} after it is retired`;
  throw new InvalidRotationError(
    `restore window '${window}' (rekey rotate --restore-window, restore_window in the admin API) is shorter than the minimum of ${MIN_RESTORE_WINDOW}: ` +
      `the retired KEK would be destroyed ${destroyed}, with no time to restore it (rekey keys restore) if something still needs it. ` +
      `Give a window of at least ${MIN_RESTORE_WINDOW}, or the reason to go below it: --allow-short-restore-window <reason> (allow_short_restore_window in the admin API), recorded in the run`,
  );
}

export const KEK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

function integer(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  const n = value ?? fallback;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new InvalidRotationError(`${name} must be a whole number from ${min} to ${max}, got ${String(value)}`);
  }
  return n;
}

function duration(name: string, value: string | undefined, fallback: string, minMs = 0): number {
  const text = value ?? fallback;
  const ms = parseDuration(text);
  if (ms === undefined || ms < minMs) {
    throw new InvalidRotationError(`${name} '${text}' is not a duration like 7d, 36h, 90m or 30s`);
  }
  return ms;
}

/** Checks the shape of a request (no I/O): numbers in range, durations that parse, KEK ids that are ids. */
export function parseRotationRequest(request: RotationRequest): RotationSettings {
  const { from, to } = request;
  const target = request.target ?? 'rekey';
  if (!TARGET_NAME.test(target)) {
    throw new InvalidRotationError(`target '${target}' is not a target name (lower-case letters, digits, '-', '_')`);
  }
  if (from !== 'current' && !KEK_ID.test(from)) {
    throw new InvalidRotationError(`from '${from}' is not a KEK id (letters, digits, '_', '.', '-'; at most 64)`);
  }
  if (to !== 'new' && !KEK_ID.test(to)) {
    throw new InvalidRotationError(
      `to '${to}' is not a KEK id (letters, digits, '_', '.', '-'; at most 64), nor 'new'`,
    );
  }
  if (from === to) throw new InvalidRotationError(`from and to are both '${from}': rotate to a different KEK`);
  if (request.keyspace !== undefined && parseKeyspaceId(request.keyspace) === undefined) {
    throw new InvalidRotationError(
      `keyspace '${request.keyspace}' is not a keyspace id (<database identity>/<schema.table>, as rekey kek-status prints it)`,
    );
  }
  if (request.tenantId !== undefined && request.tenantId.length === 0) {
    throw new InvalidRotationError('tenantId must not be empty');
  }
  return {
    target,
    from,
    to,
    batchSize: integer('batchSize', request.batchSize, DEFAULTS.batchSize, 1, 50_000),
    parallelism: integer('parallelism', request.parallelism, DEFAULTS.parallelism, 1, 64),
    gracePeriodMs: duration('gracePeriod', request.gracePeriod, DEFAULTS.gracePeriod),
    dryRun: request.dryRun ?? false,
    tenantId: request.tenantId,
    maxPasses: integer('maxPasses', request.maxPasses, DEFAULTS.maxPasses, 1, 100),
    sliceTimeBudgetMs: duration('sliceTimeBudget', request.sliceTimeBudget, DEFAULTS.sliceTimeBudget, 100),
    fleetTimeoutMs: duration('fleetTimeout', request.fleetTimeout, DEFAULTS.fleetTimeout),
    fleetLiveWithinMs: duration('fleetLiveWithin', request.fleetLiveWithin, DEFAULTS.fleetLiveWithin, 1_000),
    confirmTimeoutMs: duration('confirmTimeout', request.confirmTimeout, DEFAULTS.confirmTimeout),
    maxHistoryEvents: integer('maxHistoryEvents', request.maxHistoryEvents, DEFAULTS.maxHistoryEvents, 20, 50_000),
    minKekAgeMs: duration('minKekAge', request.minKekAge, '0s'),
    restoreWindowMs: duration('restoreWindow', request.restoreWindow, DEFAULTS.restoreWindow),
  };
}

/** What the registry and the key provider say about the KEKs named in a request. */
export interface KekFacts {
  activeKekId: string | undefined;
  from: { registryState?: string; inProvider: boolean };
  to: { registryState?: string; inProvider: boolean } | undefined;
  providerCanGenerate: boolean;
  providerDescription: string;
  /** A decrypt-only KEK that still wraps rows: a rotation to the active KEK that did not finish (aborted, failed). */
  unfinished?: { kekId: string; rows: number };
  /** What records the target's first active KEK, for a registry that has none yet (its target's words). */
  firstActive?: string;
}

/** How the registry resolves a request. */
export interface ResolvedRotation {
  from: string;
  /** Set when the registry decides `to` (a rotation that did not finish is taken up again). */
  to?: string;
  /** `to` is already active: the run takes up an unfinished rotation after its promotion. */
  resumes?: boolean;
  /** The registry says this rotation is already done: the run ends at once, saying so. */
  alreadyDone?: string;
}

/** The checks that need the registry and the key provider. */
export function checkAgainstKeks(settings: RotationSettings, facts: KekFacts): ResolvedRotation {
  if (
    settings.from !== 'current' &&
    settings.to !== 'new' &&
    (facts.from.registryState === 'retired' || facts.from.registryState === 'destroyed') &&
    facts.to?.registryState === 'active'
  ) {
    return {
      from: settings.from,
      alreadyDone: `already done: '${settings.from}' is retired and '${settings.to}' is the active KEK`,
    };
  }
  // `current` while an earlier rotation left rows on a decrypt-only KEK: finish that one first, or its rows would be
  // stranded on a KEK that no later rotation moves.
  if (settings.from === 'current' && facts.unfinished && facts.activeKekId !== undefined) {
    return { from: facts.unfinished.kekId, to: facts.activeKekId, resumes: true };
  }
  const from = settings.from === 'current' ? facts.activeKekId : settings.from;
  if (from === undefined) {
    throw new InvalidRotationError(
      `the KEK registry has no active KEK yet: ${facts.firstActive ?? 'seed it with <PREFIX>_CURRENT_KEK_ID first'}`,
    );
  }
  if (!facts.from.registryState && !facts.from.inProvider) {
    throw new InvalidRotationError(
      `unknown KEK '${from}': neither the registry nor ${facts.providerDescription} holds it`,
    );
  }
  if (!facts.from.inProvider) {
    throw new InvalidRotationError(
      `KEK '${from}' is not in ${facts.providerDescription}: its DEKs cannot be unwrapped`,
    );
  }
  // A rotation that was aborted after its promotion is taken up again: `to` is active, `from` decrypt-only.
  const resumes =
    from !== facts.activeKekId && settings.to === facts.activeKekId && facts.from.registryState === 'decrypt_only';
  if (from !== facts.activeKekId && !resumes) {
    throw new InvalidRotationError(
      facts.activeKekId === undefined && facts.firstActive !== undefined
        ? `'${from}' is not the KEK in use (the active KEK is 'none': the KEK registry has none yet): ${facts.firstActive}`
        : `'${from}' is not the KEK in use (the active KEK is '${facts.activeKekId ?? 'none'}'): rotate from the active KEK`,
    );
  }
  if (settings.to === 'new') {
    if (!facts.providerCanGenerate) {
      throw new InvalidRotationError(
        `${facts.providerDescription} cannot generate KEKs: add the new KEK to every worker and application instance and name it with 'to'`,
      );
    }
    return { from };
  }
  // `current` to the active KEK, with no older KEK left wrapping a row (else the branch above takes that one up):
  // every row is where it was asked to go, as the runbook's rotate-all finds it run again after it completed.
  if (settings.from === 'current' && from === settings.to) {
    return {
      from,
      alreadyDone: `'${from}' is already the active KEK and no older KEK still wraps a row: nothing left to rotate`,
    };
  }
  if (from === settings.to) throw new InvalidRotationError(`from and to are both '${from}': rotate to a different KEK`);
  if (facts.to?.registryState === 'retired' || facts.to?.registryState === 'destroyed') {
    throw new InvalidRotationError(
      `KEK '${settings.to}' is ${facts.to.registryState}: a rotation never goes back to it, choose a new KEK`,
    );
  }
  if (!facts.to?.inProvider) {
    throw new InvalidRotationError(
      `unknown KEK '${settings.to}': ${facts.providerDescription} does not hold it (add it everywhere first, or use 'new')`,
    );
  }
  return resumes ? { from, resumes } : { from };
}
