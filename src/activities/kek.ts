import { activityInfo, Context } from '@temporalio/activity';
import type { ProvisionOptions } from '../keyring/driver';
import { formatDuration, parseDuration } from '../rotation/durations';
import {
  checkAgainstKeks,
  DEFAULTS,
  effectiveRestoreWindowMs,
  MIN_RESTORE_WINDOW,
  parseRotationRequest,
  refuseShortRestoreWindow,
  type RotationRequest,
} from '../rotation/rotation-input';
import { proveLabelled, proveRowsNotLabelled, type ProofCheckpoint } from '../rewrap/still-on';
import { addProofs, describeNeeded, emptyProof, type LabelProof } from '../rotation/label-proof';
import { prePassCheckpointOf, runPrePass, type PrePassCheckpoint } from '../rewrap/pre-pass';
import { readProgress } from '../store/rewrap-progress';
import { isRotationIdOf, rotationWorkflowId } from '../rotation/identity';
import { BUILTIN_TARGET } from '../targets/builtin';
import type { TargetRuntime } from '../targets/runtime';
import type { PoolClient } from 'pg';
import type { RowCrypto } from '../crypto/row-crypto';
import { describeTable, GENERATION } from '../targets/target';
import { firstContact, legacyLeft } from './target-checks';
import { legacyValuesRemain, legacyValuesUnder, legacyWhere, type LegacyProof } from './legacy-proof';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { withKeks, withProofKeys } from './keys';
import type { AppInstance } from '../store/app-instances';
import { InvalidRotationError, KeyMaterialError, RetireRefusedError } from '../errors';
import type { EngineKek } from '../keyring/cipher';
import type { ProvedUnder } from '../store/target-store';
import { verifiedFails, type VerifiedUnder } from '../rotation/verified-mark';

export interface FleetReadiness {
  live: number;
  canUnwrap: number;
  wrapsWith: number;
  /** Live instances that cannot unwrap with the KEK yet (first few). */
  cannotUnwrap: string[];
  /** Live instances that do not wrap with the KEK yet (first few). */
  notWrapping: string[];
  /**
   * Live instances that hold a key under the KEK's id whose fingerprint is not the registered one, or announce no
   * fingerprint (first few, with what they hold). Never ready: a key is trusted by its fingerprint, not its name.
   */
  wrongKey?: string[];
}

/** What the first step learned: the KEK in use, who owns promotion and retirement, and what to ask of operators. */
export interface ValidatedRotation {
  from: string;
  /** Set when the registry decided `to`: an unfinished rotation to the active KEK is taken up again. */
  to?: string;
  /** `to` is already active: promotion is done. */
  resumes?: boolean;
  nothingToDo?: string;
  /** What the target's rows hold ('DEK', 'secret'). */
  noun?: string;
  /** The target database's clock when the rotation began: rows the application writes after it are evidence. */
  since?: string;
  /** For a dry run: the rows per KEK label, and how many of a sample the format reads and the KEK opens. */
  census?: CensusLine[];
  /** Absent in results recorded before targets existed (rekey's own: the registry). */
  currentKekOwner?: 'registry' | 'application';
  /** For an application-owned target: what the operator must do at each step. */
  instructions?: { promote: string; retire: string };
  /** The keyspace the target is on the worker that validated it; absent in results of builds before keyspaces. */
  keyspace?: string;
}

export interface CensusLine {
  /** A KEK label as the rows carry it; '(none)' for rows with no value at all. */
  kekId: string;
  rows: number;
  sampled: number;
  /** Sampled rows whose stored form the target's format reads. */
  readable: number;
  /** Sampled rows that decrypt under this KEK; undefined when this worker holds no key for it. */
  opens?: number;
}

/**
 * What the destroy step did: `not-yet` (the window has not ended: wait `waitMs`), `kept` (restored), `destroyed`, or
 * `refused` (rows may still need the KEK: `detail` says what to do; its window is open again until `retryAt`).
 */
export interface DestroyReport {
  outcome: 'not-yet' | 'kept' | 'destroyed' | 'refused';
  detail: string;
  waitMs?: number;
  /** The store is read-only to rekey (the environment): `detail` says what the operator must remove. */
  operatorMustRemove?: boolean;
  /** Rows labelled with the KEK that the step proved under a usable KEK and relabelled, under the lock. */
  relabelled?: number;
  /** Refused: how many rows may need the KEK, the first few of them, and when the step tries again. */
  needed?: number;
  neededRows?: { tenantId: string; reason: string }[];
  retryAt?: string;
}

/** What one part of a proof did (see proveLabels). */
export interface ProofOutcome extends LabelProof {
  /** Where the next part goes on. */
  cursor: string;
  /** No row labelled with the KEK is left after `cursor`. */
  done: boolean;
}

/** Rows per batch of the proof under the registry row's lock (rows written since the proof before it). */
const LOCKED_PROOF_BATCH = 2_000;

/** How many rows per KEK a dry run's census tries. */
const CENSUS_SAMPLE = 200;

/** How many rows first contact reads to prove the codec reads the table before anything is written. */

/**
 * Target of an activity's input; absent in inputs recorded before targets existed (rekey's own). The keyspace the
 * run belongs to, which the worker's target must be (absent in inputs of builds before keyspaces).
 */
export interface OnTarget {
  target?: string;
  keyspace?: string;
}

/**
 * Mycelium's guide forbids rotating the KEK while any v1 value remains: a legacy value is encrypted by the KEK itself
 * and becomes unreadable once it is retired. Refused, naming what is left and the command that moves it, unless the
 * operator gives a reason to go on.
 */
async function refuseWhileLegacyValuesRemain(runtime: TargetRuntime, override: string | undefined): Promise<void> {
  if (override !== undefined && override.trim() !== '') return;
  const fields = (await legacyLeft(runtime))
    .filter((field) => field.legacy > 0)
    .map((field) => ({ name: field.name, where: field.where, needed: field.legacy }));
  if (fields.length === 0) return;
  const needed = fields.reduce((sum, field) => sum + field.needed, 0);
  throw legacyValuesRemain(runtime.definition.name, { needed, fields }, 'not starting the rotation');
}

/**
 * Under the retire step's lock on `from`'s registry row: a legacy value that opens under `from` (restored from a
 * backup, written by a gateway of a build before envelope encryption since the rotation began) becomes unreadable once
 * `from` retires. Refused as the rotation's start refuses, unless the run carries the operator's reason
 * (allowLegacyValues): then the step says how many and why it goes on, and retires.
 */
async function refuseLegacyValuesUnder(
  runtime: TargetRuntime,
  client: PoolClient,
  from: string,
  override: string | undefined,
): Promise<void> {
  if ((runtime.definition.fields ?? []).length === 0) return;
  // Not held here: every legacy value counts as needing it.
  const legacy: LegacyProof = await runtime.keyring.withTrialCipher(from, (cipher) =>
    legacyValuesUnder(runtime, client, from, cipher),
  );
  if (legacy.needed === 0) return;
  const name = runtime.definition.name;
  if (override !== undefined && override.trim() !== '') {
    activityContext()?.log.warn(
      `retiring KEK '${from}' of target '${name}' although ${legacy.needed} legacy value(s) encrypted directly by it remain (${legacyWhere(legacy)}): they become unreadable once it is destroyed; the run's reason (--allow-legacy-values): ${override.trim()}`,
    );
    return;
  }
  throw legacyValuesRemain(name, legacy, 'not retiring it', from);
}

/**
 * What a provision tells the key store of this attempt: on a retry, that an earlier attempt may have created the KEK,
 * and until when it may look for it (half the attempt's time, so that the step still ends). Nothing outside an
 * activity (a test calling it directly).
 */
function generateOptions(): ProvisionOptions {
  let info;
  try {
    info = activityInfo();
  } catch {
    return {};
  }
  return info.attempt > 1 ? { retry: true, searchUntil: Date.now() + info.startToCloseTimeoutMs / 2 } : {};
}

/** The activity's context, or nothing outside an activity (a test calling it directly). */
function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

/** How long a refused destruction opens the KEK's restore window again when the caller does not say. */
const DESTROY_REOPEN_MS = 3_600_000;

/** `The first n: id (why), …` for a refusal. */
function firstNeeded(proof: LabelProof): string {
  return `The first ${proof.neededRows.length}: ${describeNeeded(proof)}`;
}

/**
 * The pre-pass of a retire or destroy step, outside the registry row's lock (src/rewrap/pre-pass.ts): every row is
 * proved in batches whose checkpoint rides this activity's heartbeat, so that a retried attempt goes on from the
 * last one it recorded, and the locked step proves only what was written since it began. Undefined where the step
 * cannot prove anything (no active KEK other than `kekId`): the locked step refuses as it always did.
 */
async function prePass(
  runtime: TargetRuntime,
  kekId: string,
  progressKey: string | undefined,
  crypto: RowCrypto | undefined,
  verified?: VerifiedUnder,
): Promise<PrePassCheckpoint | undefined> {
  const context = activityContext();
  const resumeFrom = prePassCheckpointOf(context?.info.heartbeatDetails, kekId);
  const labelDefault = await runtime.store.labelDefault();
  let done: PrePassCheckpoint;
  try {
    done = await withProofKeys(runtime, kekId, crypto, async (keys, rows) => {
      const provedUnder = verified && (await verifiedStillProves(runtime, kekId, keys.active, verified));
      return runPrePass(runtime.store, runtime.db, rows, keys, {
        ...(provedUnder && { provedUnder }),
        batchSize: LOCKED_PROOF_BATCH,
        ...(progressKey !== undefined && { progressKey }),
        ...(labelDefault !== undefined && { labelDefault }),
        ...(resumeFrom !== undefined && { resumeFrom }),
        onCheckpoint: (checkpoint) => context?.heartbeat(checkpoint),
        onMarkNote: (note) => {
          context?.log.warn(`proof of KEK '${kekId}' of target '${runtime.definition.name}': ${note}`);
        },
      });
    });
  } catch (err) {
    if (err instanceof RetireRefusedError) return undefined;
    throw err;
  }
  const name = runtime.definition.name;
  const resumed =
    resumeFrom === undefined
      ? ''
      : ` (attempt ${context?.info.attempt}, resumed at stage '${resumeFrom.stage}' after id '${resumeFrom.cursor}')`;
  if (done.stage === 'whole') {
    context?.log.warn(
      `proof of KEK '${kekId}' of target '${name}': every row is proved under the registry row's lock, not only those written since a pre-pass: ${done.why}${resumed}`,
    );
  } else {
    context?.log.info(
      `proof of KEK '${kekId}' of target '${name}': the pre-pass outside the lock proved ${done.labelled.tried} row(s) labelled with it (${done.labelled.relabelled} relabelled) and read ${done.others.tried} other row(s)${resumed}; under the lock, the rows written since`,
    );
  }
  return done;
}

/**
 * Where the active KEK is in a remote store (AWS KMS, Vault Transit: a trial is a request against the quota), the rows
 * verify proved under it that the database shows unchanged since (src/rotation/verified-mark.ts): the pre-pass leaves
 * them out. Undefined for key bytes (a trial costs the worker microseconds, no quota) or where the proof no longer
 * stands (the log says why).
 */
async function verifiedStillProves(
  runtime: TargetRuntime,
  kekId: string,
  active: EngineKek,
  verified: VerifiedUnder,
): Promise<ProvedUnder | undefined> {
  if (active.key.length > 0) return undefined;
  const why = verifiedFails(verified, active, await runtime.store.markNow());
  const about = `proof of KEK '${kekId}' of target '${runtime.definition.name}'`;
  if (why !== undefined) {
    activityContext()?.log.info(
      `${about}: every row labelled '${active.kekId}' is tried again, not taken from verify: ${why}`,
    );
    return undefined;
  }
  activityContext()?.log.info(
    `${about}: the rows labelled '${active.kekId}' unchanged since verify opened them under it are not tried again`,
  );
  return { label: active.kekId, mark: verified.mark };
}

/**
 * Proves the rows that may need `kekId` inside the caller's transaction, which holds the KEK's registry row: streamed,
 * no cap, heartbeating where it runs in an activity. After a pre-pass that ended at stage 'done', only the rows written
 * since it began (the rest were proved by it, as they still are); otherwise every row. The rows labelled `kekId`
 * first: relabels are counted in `progressKey`'s row in the same transaction. Then every other row with a value
 * (labelled with another KEK, with the column's default, or not at all) is tried under the usable KEKs, reading only:
 * one that opens under none of them may need `kekId` too.
 */
async function proveUnderLock(
  runtime: TargetRuntime,
  client: PoolClient,
  kekId: string,
  progressKey: string | undefined,
  crypto: RowCrypto | undefined,
  before: PrePassCheckpoint | undefined,
): Promise<LabelProof> {
  const context = activityContext();
  // The heartbeat keeps the pre-pass's checkpoint: a retry of the locked step does not prove the rows again.
  const heartbeat = () => context?.heartbeat(before);
  const name = runtime.definition.name;
  // The tables the scan reads and the server's start, now and after the proof: rows of a table that joined it since the
  // pre-pass began (or while the rows are proved), and rows a file-level restore put back, carry older xmins than any
  // mark, so they are proved with every other row.
  const scope = await runtime.store.scanScope();
  let since = before?.stage === 'done' ? before.since : undefined;
  if (since !== undefined && before?.scope !== scope) {
    since = undefined;
    context?.log.warn(
      `proof of KEK '${kekId}' of target '${name}' under the lock: every row is proved, not only those written since the pre-pass began: ${before?.scope === undefined ? 'the pre-pass recorded no tables (an older build)' : `the server restarted (a file-level restore keeps every oid) or the tables ${describeTable(runtime.definition.table)} reads changed since (a table attached, detached or put in its place)`}`,
    );
  }
  const changed = since === undefined ? {} : { changedSince: since };
  const { labelled, others } = await withProofKeys(runtime, kekId, crypto, async (keys, rows) => {
    const proved = await proveLabelled(runtime.store, client, rows, keys, {
      after: '',
      batchSize: LOCKED_PROOF_BATCH,
      ...(progressKey !== undefined && { progressKey }),
      ...changed,
      onBatch: heartbeat,
    });
    if (proved.proof.contended > 0) return { labelled: proved.proof };
    // A label can lie or be missing: every other row with a value is tried too (proveRowsNotLabelled).
    const labelDefault = await runtime.store.labelDefault();
    const rest = await proveRowsNotLabelled(runtime.store, client, rows, keys, {
      batchSize: LOCKED_PROOF_BATCH,
      ...(labelDefault !== undefined && { labelDefault }),
      ...changed,
      onBatch: heartbeat,
    });
    return { labelled: proved.proof, others: rest };
  });
  if (labelled.contended > 0) {
    // Rows a writer kept changing while they were proved: not known either way. The step runs again (retried).
    throw new Error(
      `${labelled.contended} row(s) labelled '${kekId}' changed under every retry while they were proved; trying again`,
    );
  }
  if ((await runtime.store.scanScope()) !== scope) {
    // A table joined or left the scan while it ran: rows it read past may be missing. Not known either way: again.
    throw new Error(
      `the tables ${describeTable(runtime.definition.table)} reads changed while KEK '${kekId}' of target '${name}' was proved under the lock (a table attached, detached or put in its place); trying again`,
    );
  }
  if (since !== undefined) {
    context?.log.info(
      `proof of KEK '${kekId}' of target '${name}' under the lock: ${labelled.tried + (others?.tried ?? 0)} row(s) written since the pre-pass began`,
    );
  }
  // What the pre-pass relabelled counts with what the lock relabelled; what it found needed, the locked step found
  // again (stage 'whole' proves every row), and what it found contended was written since (proved here).
  const withPrePass =
    before === undefined
      ? labelled
      : addProofs({ ...emptyProof(), tried: before.labelled.tried, relabelled: before.labelled.relabelled }, labelled);
  // `tried` stays the rows labelled `kekId`; the others add what may need it.
  return others === undefined ? withPrePass : addProofs(withPrePass, { ...others, tried: 0 });
}

/** The report of a destruction refused for rows that may need the KEK: what they are and exactly what to do. */
function refusedDestruction(
  runtime: TargetRuntime,
  kekId: string,
  active: string,
  proof: LabelProof,
  until: Date,
  legacy?: LegacyProof,
): DestroyReport {
  const { definition } = runtime;
  const name = definition.name;
  const retryAt = until.toISOString();
  const legacyNeeded = legacy?.needed ?? 0;
  const rows = proof.needed - legacyNeeded;
  const restore = `\`rekey keys restore ${kekId} --target ${name} --reason "<why>"\``;
  const rowsPart =
    rows === 0
      ? ''
      : `${rows} ${definition.noun}(s) in ${describeTable(definition.table)} ` +
        `labelled '${kekId}', or with a label that does not name it (another KEK's, the column's default, none), ` +
        `open under no KEK rekey may use, and may need it. `;
  const legacyPart =
    legacy === undefined || legacyNeeded === 0
      ? ''
      : `${legacyNeeded} legacy value(s) encrypted directly by '${kekId}' (no DEK: ${legacyWhere(legacy)}) still open under it, or could not be tried: destroying it loses them for good. `;
  const rowsTodo =
    rows === 0
      ? ''
      : `To keep those rows: run ${restore} before then, then ` +
        `\`rekey rotate --target ${name} --from ${kekId} --to ${active}\`, which moves them and retires '${kekId}' again ` +
        `(its destruction then waits for the new window); a rotation moves only the rows labelled '${kekId}', so a row ` +
        `labelled otherwise whose value is under it is labelled '${kekId}' first. `;
  const legacyTodo =
    legacyNeeded === 0
      ? ''
      : `To keep those legacy values: run ${restore} before then, then \`rekey migrate-dek --target ${name}\`, which moves them under DEKs. `;
  return {
    outcome: 'refused',
    detail:
      `KEK '${kekId}' of target '${name}' is not destroyed: ${rowsPart}${legacyPart}${firstNeeded(proof)}. ` +
      `Its restore window is open again until ${retryAt}. ${rowsTodo}${legacyTodo}` +
      `${legacyNeeded === 0 ? 'Rows' : 'Rows or legacy values'} that are not needed: repair or delete them. ` +
      `This step tries again at ${retryAt}.`,
    needed: proof.needed,
    neededRows: proof.neededRows,
    retryAt,
    ...(proof.relabelled > 0 && { relabelled: proof.relabelled }),
  };
}

export function createKekActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);

  /**
   * On first contact with a target whose application picks its own current KEK (the runbook's rotate-all has no
   * body): the one KEK its rows use other than `to`. Several: the request must name one.
   */
  async function inUse(runtime: TargetRuntime, to: string): Promise<string | undefined> {
    const { byLabel } = await runtime.store.countsByLabel();
    const labels = Object.entries(byLabel).filter(([kekId]) => kekId !== to);
    if (labels.length <= 1) return labels[0]?.[0];
    throw new InvalidRotationError(
      `target '${runtime.definition.name}' has rows on ${labels.map(([kekId, n]) => `'${kekId}' (${n})`).join(', ')}: name the KEK to rotate from`,
    );
  }

  /** Per KEK label: how many rows, and of a sample, how many the format reads and the KEK opens. */
  async function census(runtime: TargetRuntime, rotation: { from: string; to: string }): Promise<CensusLine[]> {
    const { store } = runtime;
    const { byLabel, withoutValue } = await store.countsByLabel();
    const lines: CensusLine[] = [];
    for (const [kekId, rows] of Object.entries(byLabel)) {
      const sample = await store.sampleOnLabel(kekId, CENSUS_SAMPLE);
      const readable = sample.filter((row) => store.codec.check(row) === undefined).length;
      let opens: number | undefined;
      try {
        opens = await withKeks(
          runtime,
          rotation,
          [kekId],
          deps.crypto,
          async ([kek], crypto) =>
            (await crypto.check(store.codec, kek!, sample)).filter((r) => r === undefined).length,
        );
      } catch {
        opens = undefined; // no key for this KEK here (or not the registered one): the census says so
      }
      lines.push({ kekId, rows, sampled: sample.length, readable, ...(opens !== undefined && { opens }) });
    }
    if (withoutValue > 0) lines.push({ kekId: '(none)', rows: withoutValue, sampled: 0, readable: 0 });
    return lines;
  }

  /** A decrypt-only KEK that still wraps rows: the `from` of a rotation to the active KEK that did not finish. */
  async function unfinishedRotation(runtime: TargetRuntime): Promise<{ kekId: string; rows: number } | undefined> {
    for (const kek of await runtime.registry.list()) {
      if (kek.state !== 'decrypt_only') continue;
      const rows = await runtime.store.countOnLabel(kek.kekId);
      if (rows > 0) return { kekId: kek.kekId, rows };
    }
    return undefined;
  }

  return {
    /**
     * The first step: the request against the target's table, its registry and its key source. Returns the resolved
     * `from`, and why there is nothing to do when the active KEK is younger than `minKekAge`.
     */
    async validateRotation(request: RotationRequest, run?: { workflowId: string }): Promise<ValidatedRotation> {
      const settings = parseRotationRequest(request);
      refuseShortRestoreWindow(request, settings);
      const runtime = await targets.forRequest({ target: settings.target, keyspace: request.keyspace });
      const { keyring, registry, definition, keyspace } = runtime;
      // Finding 9: a run of this build runs under its keyspace's workflow id, and no other.
      if (run !== undefined && !isRotationIdOf(run.workflowId, settings.target, keyspace, settings.dryRun)) {
        const expected = `${rotationWorkflowId(settings.target, keyspace)}${settings.dryRun ? '-dry-run-<ms>' : ''}`;
        throw new InvalidRotationError(
          `a ${settings.dryRun ? 'dry run' : 'rotation'} of target '${settings.target}' in keyspace ${keyspace.id} runs under the workflow id ${expected}, not '${run.workflowId}': ` +
            `start it again under that id (rekey rotate and the admin API do; rekey kek-status prints it)`,
        );
      }
      await runtime.keyring.reload();
      // A store written before owners existed belongs to the first keyspace that uses it: recorded before anything else.
      await runtime.keyring.adopt();
      let active = await registry.active();
      let from = settings.from === 'current' ? active?.kekId : settings.from;
      if (from === undefined && definition.currentKek.owner === 'application') {
        from = await inUse(runtime, settings.to);
      }
      if (definition.label.kind === 'generation') {
        for (const [what, id] of [
          ['from', from],
          ['to', settings.to],
        ] as const) {
          if (id !== undefined && id !== 'new' && !GENERATION.test(id)) {
            throw new KeyMaterialError(
              `target '${definition.name}' labels KEKs with integer generations: ${what} '${id}' is not one (e.g. --from-version 1 --to-version 2)`,
              what,
            );
          }
        }
      }
      if (from !== undefined && settings.to !== 'new') keyring.nameRotation(from, settings.to);
      // The keys this worker holds, by the names this rotation gives them.
      const held = new Map((await runtime.keyring.held()).reverse().map((k) => [k.kekId, k.fingerprint]));
      for (const kekId of [from, settings.to]) {
        if (kekId !== undefined && kekId !== 'new' && held.has(kekId))
          await runtime.keyring.refuseForeign(kekId, 'rotating with');
      }
      await firstContact(runtime);
      await refuseWhileLegacyValuesRemain(runtime, request.allowLegacyValues);
      // A target met for the first time: the KEK its rows use now is the active one.
      const fromFingerprint = from === undefined ? undefined : held.get(from);
      if (
        !active &&
        from !== undefined &&
        fromFingerprint !== undefined &&
        definition.currentKek.owner === 'application'
      ) {
        await registry.seedActive(from, fromFingerprint);
        active = await registry.active();
      }
      const unfinished = await unfinishedRotation(runtime);
      const owner = definition.currentKek;
      const factsFor = async (resolvedFrom: string, to: string): Promise<ValidatedRotation> => {
        const fill = (text: string) =>
          text.replaceAll('{from}', resolvedFrom).replaceAll('{to}', to === 'new' ? 'the new KEK' : to);
        return {
          from: resolvedFrom,
          currentKekOwner: owner.owner,
          noun: definition.noun,
          since: await runtime.store.now(),
          ...(owner.owner === 'application' && {
            instructions: { promote: fill(owner.promote.instructions), retire: fill(owner.retire.instructions) },
          }),
        };
      };
      // Whether a rotation is due comes first (a schedule's run, from the active KEK): a KEK younger than minKekAge
      // ends the run with nothing to do, whatever the request could not have done (a source that cannot generate).
      const activeAge = active?.activatedAt ? Date.now() - active.activatedAt.getTime() : Infinity;
      if (settings.from === 'current' && active && !unfinished && activeAge < settings.minKekAgeMs) {
        return {
          ...(await factsFor(active.kekId, settings.to)),
          nothingToDo: `KEK '${active.kekId}' became active ${formatDuration(activeAge)} ago; rotations are due after ${formatDuration(settings.minKekAgeMs)}`,
        };
      }
      const fromRecord = from === undefined ? undefined : await registry.get(from);
      const toRecord = settings.to === 'new' ? undefined : await registry.get(settings.to);
      const resolved = checkAgainstKeks(settings, {
        activeKekId: active?.kekId,
        from: { registryState: fromRecord?.state, inProvider: from !== undefined && held.has(from) },
        to: settings.to === 'new' ? undefined : { registryState: toRecord?.state, inProvider: held.has(settings.to) },
        providerCanGenerate: keyring.makesKeks,
        providerDescription: keyring.description,
        unfinished,
        firstActive:
          owner.owner === 'application'
            ? `name the KEK its ${definition.noun} use now as from (--from; the run records it as the active KEK)`
            : `the application's first start (TenantCrypto.start, docs/03) records the current KEK of ${keyring.description} as the active one: start it, then rotate`,
      });
      const to = resolved.to ?? settings.to;
      const facts: ValidatedRotation = {
        keyspace: keyspace.id,
        ...(await factsFor(resolved.from, to)),
        ...(resolved.to !== undefined && { to: resolved.to }),
        ...(resolved.resumes && { resumes: true }),
      };
      if (resolved.alreadyDone !== undefined) return { ...facts, nothingToDo: resolved.alreadyDone };
      if (settings.dryRun) facts.census = await census(runtime, { from: resolved.from, to });
      // The fingerprints this worker holds must be the registry's before anything else happens: `from`'s, and `to`'s
      // where an earlier run registered it (a key of another worker's under that id is refused here, not at provision).
      const registeredTo = to !== 'new' && (resolved.to !== undefined || toRecord !== undefined);
      await withKeks(
        runtime,
        { from: resolved.from, to },
        [resolved.from, ...(registeredTo ? [to] : [])],
        deps.crypto,
        () => Promise.resolve(),
      );
      const age = active?.activatedAt ? Date.now() - active.activatedAt.getTime() : Infinity;
      if (age < settings.minKekAgeMs && !resolved.resumes) {
        return {
          ...facts,
          nothingToDo: `KEK '${resolved.from}' became active ${formatDuration(age)} ago; rotations are due after ${formatDuration(settings.minKekAgeMs)}`,
        };
      }
      return facts;
    },

    /** The id a generated KEK will get. Read-only, so a retry is harmless; provisionKek creates it. */
    async proposeKekId(on: OnTarget = {}): Promise<string> {
      return (await targets.forRequest(on)).keyring.proposeKekId();
    },

    /**
     * The new KEK exists in the key source (generated if asked and not there yet), is recorded in the target's
     * registry with its fingerprint, and this worker can seal and open with it. Idempotent.
     */
    async provisionKek({
      kekId,
      generate,
      target,
      keyspace,
      from,
    }: { kekId: string; generate: boolean; from?: string } & OnTarget): Promise<{ fingerprint: string }> {
      const { keyring } = await targets.forRequest({ target, keyspace });
      if (from !== undefined) keyring.nameRotation(from, kekId);
      // The keyring checks the store's names and owner, makes the KEK where asked (a store rekey may not write answers
      // what the operator must add), registers its fingerprint, and proves it wraps and opens.
      return keyring.provision(kekId, { generate, ...generateOptions() });
    },

    async fleetReadiness({
      kekId,
      liveWithinMs,
      ...on
    }: { kekId: string; liveWithinMs: number } & OnTarget): Promise<FleetReadiness> {
      const { instances, registry } = await targets.forRequest(on);
      const [live, registered] = await Promise.all([instances.live(liveWithinMs), registry.require(kekId)]);
      // An instance holds the KEK only if it announces the registered fingerprint under its id.
      const holds = (i: AppInstance) => i.kekFingerprints[kekId] === registered.fingerprint;
      const wrongKey = live
        .filter((i) => i.unwrapKekIds.includes(kekId) && !holds(i))
        .map((i) =>
          i.kekFingerprints[kekId] === undefined
            ? `${i.instanceId} (announces no fingerprint: upgrade it)`
            : `${i.instanceId} (holds ${i.kekFingerprints[kekId]}, registry ${registered.fingerprint})`,
        );
      const cannotUnwrap = live.filter((i) => !i.unwrapKekIds.includes(kekId) || !holds(i)).map((i) => i.instanceId);
      // A worker wraps only what a rotation rewraps, under `to`: it is ready for both gates once it holds `to`.
      const wraps = (i: AppInstance) => holds(i) && (i.role === 'worker' || i.wrapKekId === kekId);
      const notWrapping = live.filter((i) => !wraps(i)).map((i) => i.instanceId);
      return {
        live: live.length,
        canUnwrap: live.length - cannotUnwrap.length,
        wrapsWith: live.length - notWrapping.length,
        cannotUnwrap: cannotUnwrap.slice(0, 10),
        notWrapping: notWrapping.slice(0, 10),
        ...(wrongKey.length > 0 && { wrongKey: wrongKey.slice(0, 10) }),
      };
    },

    /** `to` becomes active and `from` decrypt-only, in one transaction; a retry after success is a no-op. */
    async promoteKek({ from, to, ...on }: { from: string; to: string } & OnTarget): Promise<void> {
      // The registry first; then a store that marks its current key itself (Secrets Manager's AWSCURRENT) follows it.
      await (await targets.forRequest(on)).keyring.promote(from, to);
    },

    /**
     * One part of a proof of the rows labelled `kekId` (retire's and destroy's, outside any lock): from `after`, in id
     * order, each row is tried under the active KEK and every other usable one; a row that opens is sealed again under
     * the active KEK and relabelled (compare-and-swap, counted in the progress row `progressKey` by the statement that
     * writes it); one that opens under none is counted as needing `kekId`. Heartbeats after every batch and resumes
     * from the last heartbeat; stops at a batch boundary after `timeBudgetMs`, or when cancelled.
     */
    async proveLabels(args: {
      kekId: string;
      after: string;
      batchSize: number;
      timeBudgetMs: number;
      progressKey: string;
      target?: string;
      keyspace?: string;
    }): Promise<ProofOutcome> {
      const runtime = await targets.forRequest(args);
      const context = activityContext();
      const resumeFrom = context?.info.heartbeatDetails as ProofCheckpoint | undefined;
      const result = await withProofKeys(runtime, args.kekId, deps.crypto, (keys, crypto) =>
        proveLabelled(runtime.store, runtime.db, crypto, keys, {
          after: args.after,
          batchSize: args.batchSize,
          timeBudgetMs: args.timeBudgetMs,
          progressKey: args.progressKey,
          ...(resumeFrom && { resumeFrom }),
          onBatch: (checkpoint) => context?.heartbeat(checkpoint),
          shouldStop: () => context?.cancellationSignal.aborted ?? false,
        }),
      );
      // Counted with the rows it wrote: exact even when an attempt died after a batch and before its heartbeat.
      const counted = await readProgress(runtime.db, args.progressKey);
      return {
        ...result.proof,
        relabelled: counted?.counters.relabelled ?? result.proof.relabelled,
        cursor: result.cursor,
        done: result.done,
      };
    },

    /**
     * Retires `from` only if no row needs it, under a lock on its registry row. There every row still labelled
     * `from` is proved (streamed, no cap): one whose value opens under a usable KEK is sealed again under the active
     * KEK and relabelled; one that opens under `from`, or under nothing, refuses the retirement, naming the first few.
     * Every row is proved first outside the lock, in a pre-pass that a retried attempt goes on from (its checkpoint
     * rides the heartbeat); under the lock, only the rows written since it began (see proveUnderLock).
     */
    async retireKek({
      from,
      restoreWindowMs: asked = parseDuration(DEFAULTS.restoreWindow)!,
      allowShortRestoreWindow,
      allowLegacyValues,
      verified,
      progressKey,
      ...on
    }: {
      from: string;
      restoreWindowMs?: number;
      /** The operator's reason for a window below MIN_RESTORE_WINDOW; without it a shorter window is raised to it. */
      allowShortRestoreWindow?: string;
      /**
       * The operator's reason to retire although legacy values under `from` remain (--allow-legacy-values); absent
       * in inputs of builds before it: no override.
       */
      allowLegacyValues?: string;
      /** What verify's check of the rows labelled `to` proved (absent in inputs of builds before it). */
      verified?: VerifiedUnder;
      progressKey?: string;
    } & OnTarget): Promise<{
      retiredAt: string;
      restorableUntil?: string;
      relabelled?: number;
      /**
       * The restore window in force (the registry's `restorable_until` − `retired_at`): what the step applied, or what
       * an earlier attempt applied; the rotation's destruction waits for it. Absent in results of builds before it.
       */
      restoreWindowMs?: number;
    }> {
      const runtime = await targets.forRequest(on);
      const { db, registry, definition, keyring } = runtime;
      // Finding (restore-window-activity): the minimum holds where the window is written, whatever validated the run.
      const restoreWindowMs = effectiveRestoreWindowMs(asked, allowShortRestoreWindow);
      if (restoreWindowMs !== asked) {
        activityContext()?.log.warn(
          `retiring KEK '${from}' of target '${definition.name}' with the minimum restore window of ${MIN_RESTORE_WINDOW}, not ${formatDuration(asked)}: the run gives no reason to go below it (--allow-short-restore-window)`,
        );
      }
      // The keyring checks the store's owner record first, proves the rows under the registry row's lock, retires the
      // KEK in the registry, and only then marks it in the store (KMS disables the key).
      // Every row is proved first outside the lock (resumable); under it, the rows written since.
      let before: PrePassCheckpoint | undefined;
      const outcome = await keyring.retire(from, {
        restoreWindowMs,
        prepare: async () => {
          before = await prePass(runtime, from, progressKey, deps.crypto, verified);
        },
        prove: async (client) => {
          await refuseLegacyValuesUnder(runtime, client, from, allowLegacyValues);
          return proveUnderLock(runtime, client, from, progressKey, deps.crypto, before);
        },
      });
      if ('refused' in outcome) {
        const proof = outcome.refused;
        throw new RetireRefusedError(
          `KEK '${from}' still wraps ${proof.needed} ${definition.noun}(s) in ${describeTable(definition.table)}: not retiring it. ` +
            `${firstNeeded(proof)}. Rows under '${from}' move with a rotation to the active KEK ` +
            `(rekey rotate --target ${definition.name} --from ${from} --to ${(await registry.active())?.kekId ?? '<the active KEK>'}); ` +
            `a rotation moves only the rows labelled '${from}', so a row labelled otherwise (another KEK, the column's default, none) whose value is under '${from}' is labelled '${from}' first; ` +
            `a row that opens under no KEK must be repaired or removed first`,
        );
      }
      // A KEK an earlier attempt retired with a shorter window has this step's window (KekRegistry.retire).
      const { retired } = outcome;
      const relabelled =
        progressKey === undefined ? undefined : (await readProgress(db, progressKey))?.counters.relabelled;
      const applied =
        retired.retiredAt && retired.restorableUntil
          ? retired.restorableUntil.getTime() - retired.retiredAt.getTime()
          : restoreWindowMs;
      return {
        retiredAt: (retired.retiredAt ?? new Date()).toISOString(),
        ...(retired.restorableUntil && { restorableUntil: retired.restorableUntil.toISOString() }),
        ...(relabelled !== undefined && { relabelled }),
        restoreWindowMs: applied,
      };
    },

    /**
     * The durable step after a retired KEK's restore window: destroys its material where the store can, and marks it
     * destroyed, in one transaction holding its registry row (a restore waits, then finds it destroyed). Nothing is
     * destroyed while the KEK is restored, or before its window ends by the database's clock. Every row still
     * labelled with it is proved there: one that opens under a usable KEK is relabelled; one that opens under none
     * may need the KEK, and refuses the destruction: the window opens again for `reopenForMs` (so that a restore can
     * save those rows) and the report says what to do.
     */
    async destroyKek({
      kekId,
      progressKey,
      reopenForMs = DESTROY_REOPEN_MS,
      ...on
    }: { kekId: string; progressKey?: string; reopenForMs?: number } & OnTarget): Promise<DestroyReport> {
      const runtime = await targets.forRequest(on);
      const { db, registry, keyring } = runtime;
      // One transaction holding the KEK's registry row: the window, the proof of its rows, the store's owner record and
      // every registry this worker can see; the registry marks it destroyed with its event, then the store destroys it.
      // Every row is proved first outside the lock (resumable), once the window has ended; under it, the rows written
      // since.
      const record = await registry.get(kekId);
      const due =
        record?.state === 'retired' && (!record.restorableUntil || record.restorableUntil <= (await registry.now()));
      const before = due ? await prePass(runtime, kekId, progressKey, deps.crypto) : undefined;
      // Legacy values (the target's `fields`) that still open under the KEK: destroying it loses them for good,
      // whatever a run's override said at retire. One that opens under no KEK is lost already and holds nothing back.
      let legacy: LegacyProof | undefined;
      const step = await keyring.destroy(kekId, {
        prove: async (client) => {
          const proof = await proveUnderLock(runtime, client, kekId, progressKey, deps.crypto, before);
          if ((runtime.definition.fields ?? []).length === 0) return proof;
          legacy = await keyring.withTrialCipher(kekId, (cipher) => legacyValuesUnder(runtime, client, kekId, cipher));
          if (legacy.needed === 0) return proof;
          return {
            ...proof,
            needed: proof.needed + legacy.needed,
            neededRows: [...proof.neededRows, ...legacy.neededRows],
          };
        },
        reopenForMs,
      });
      let report: DestroyReport;
      if (step.outcome === 'refused') {
        const active = (await registry.active())?.kekId ?? '<the active KEK>';
        report = refusedDestruction(runtime, kekId, active, step.proof, step.until, legacy);
      } else if (step.outcome === 'destroyed') {
        report = {
          outcome: 'destroyed',
          detail: step.detail,
          ...(step.operatorMustRemove && { operatorMustRemove: true }),
          ...(step.proof !== undefined && step.proof.relabelled > 0 && { relabelled: step.proof.relabelled }),
        };
      } else {
        report = step;
      }
      if (progressKey === undefined || report.outcome === 'not-yet' || report.outcome === 'kept') return report;
      // Counted with the rows it wrote, once: a retry of a step whose answer was lost answers the same count.
      const relabelled = (await readProgress(db, progressKey))?.counters.relabelled ?? 0;
      return { ...report, ...(relabelled > 0 && { relabelled }) };
    },

    async kekStatus({ target, keyspace }: OnTarget = {}) {
      const { store, registry } = await targets.forRequest({ target: target ?? BUILTIN_TARGET, keyspace });
      const [{ byLabel }, active] = await Promise.all([store.countsByLabel(), registry.active()]);
      const staleCounts = Object.fromEntries(Object.entries(byLabel).filter(([kekId]) => kekId !== active?.kekId));
      return { currentKekId: active?.kekId ?? null, dekCounts: byLabel, staleCounts };
    },
  };
}
