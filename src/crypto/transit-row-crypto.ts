// The rewrap engine's crypto for KEKs that never leave Vault Transit: each row's DEK moves from one version of the
// keyspace's Transit key to another with `rewrap`, inside Vault, many rows a request (`batch_input`), so no plaintext
// DEK exists in the worker. Each row is bound to its tenant by the derived key's context (Transit's rewrap keeps the
// context; it drops associated data). Requests are paced (bounded concurrency, a steady rate) and counted.
import type { Codec, Row, TransitValues } from '../codec/sealed-format';
import type { RewrapRowsOptions, RewrapRowsResult, RowKek, RowRewrap } from '../rewrap/rewrap-rows';
import { BATCHES_AHEAD, type CallWindow, type RequestPacer } from './request-pacer';
import type { RowCrypto } from './row-crypto';
import { ConfigError, KeyMaterialError, UnreadableValueError } from '../errors';

/** One item of a Transit batch: a ciphertext, its row's context, and the version to wrap it under. */
export interface TransitItem {
  ciphertext: string;
  context: string;
  key_version: number;
}

/** Per item: the new ciphertext, or Transit's reason for refusing it (not this key, context or tampered). */
export type TransitOutcome = { ciphertext: string } | { refused: string };

/** One counted `rewrap` request of a batch (VaultTransitKeys.rewrapBatch). */
export type RewrapBatch = (items: readonly TransitItem[]) => Promise<TransitOutcome[]>;

/** The Transit key version a unit of work's KEK is (checked against its fingerprint and Vault's key). */
export type VersionFor = (kek: RowKek) => number;

type Planned =
  | { kind: 'move'; index: number; item: TransitItem; relabel: boolean }
  | { kind: 'already'; index: number; item: TransitItem; value: Buffer }
  | { kind: 'skip' }
  | { kind: 'fail'; index: number; reason: string };

export class TransitRowCrypto implements RowCrypto {
  readonly threads = 0;

  constructor(
    private readonly pacer: RequestPacer,
    private readonly batchSize: number,
    private readonly versionFor: VersionFor,
    private readonly rewrapBatch: RewrapBatch,
  ) {}

  async rewrap(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    const transit = transitOf(codec);
    const fromVersion = this.versionFor(from);
    const toVersion = this.versionFor(to);
    // A dry run moves nothing: it asks Vault whether the row opens under `from`, wrapping it to `from` itself.
    const target = options.dryRun ? fromVersion : toVersion;
    const planned = rows.map((row, index): Planned => {
      let ciphertext: string;
      let context: string;
      try {
        ciphertext = transit.ciphertext(row);
        context = transit.context(row);
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        return options.others ? { kind: 'skip' } : { kind: 'fail', index, reason: err.reason };
      }
      const version = transit.version(ciphertext);
      if (version === fromVersion) {
        return { kind: 'move', index, item: { ciphertext, context, key_version: target }, relabel: options.others };
      }
      // A row on a third KEK that says so is left alone.
      if (options.others) return { kind: 'skip' };
      if (version === toVersion) {
        // Labelled `from` but already under `to`: proven to open there (rewrapped to itself), only relabelled.
        const value = options.dryRun ? Buffer.alloc(0) : transit.value(ciphertext);
        return { kind: 'already', index, item: { ciphertext, context, key_version: toVersion }, value };
      }
      return {
        kind: 'fail',
        index,
        reason: `it names Transit key version ${version}, neither '${from.kekId}' (${fromVersion}) nor '${to.kekId}' (${toVersion})`,
      };
    });
    const asked = planned.filter((p): p is Extract<Planned, { item: TransitItem }> => 'item' in p);
    const { outcomes, requests } = await this.send(
      asked.map((p) => p.item),
      options.calls,
    );
    const result: RewrapRowsResult = { writes: [], failures: [], requests };
    const byIndex = new Map<number, RowRewrap | { failure: string }>();
    asked.forEach((p, i) => {
      const outcome = outcomes[i]!;
      if ('refused' in outcome) {
        byIndex.set(p.index, {
          failure: `Vault Transit does not open it under '${p.kind === 'move' ? from.kekId : to.kekId}' (${outcome.refused})`,
        });
      } else if (p.kind === 'move') {
        const values = options.dryRun ? [] : [transit.value(outcome.ciphertext)];
        byIndex.set(p.index, { index: p.index, relabel: p.relabel, values });
      } else {
        byIndex.set(p.index, { index: p.index, relabel: true, values: options.dryRun ? [] : [p.value] });
      }
    });
    for (const p of planned) {
      if (p.kind === 'fail') byIndex.set(p.index, { failure: p.reason });
    }
    for (const [index, outcome] of [...byIndex].sort(([a], [b]) => a - b)) {
      if ('failure' in outcome) result.failures.push({ index, reason: outcome.failure });
      else result.writes.push(outcome);
    }
    return result;
  }

  /** A slice's batches run their requests in one window of REKEY_VAULT_TRANSIT_CONCURRENCY (RowCrypto.pipeline). */
  pipeline(): { calls: CallWindow; batches: number } {
    return { calls: this.pacer.window(), batches: BATCHES_AHEAD };
  }

  async check(codec: Codec, kek: RowKek, rows: readonly Row[]): Promise<(string | undefined)[]> {
    const transit = transitOf(codec);
    const version = this.versionFor(kek);
    const reasons: (string | undefined)[] = rows.map(() => undefined);
    const asked: { index: number; item: TransitItem }[] = [];
    rows.forEach((row, index) => {
      try {
        const ciphertext = transit.ciphertext(row);
        const named = transit.version(ciphertext);
        if (named !== version) {
          reasons[index] = `it names Transit key version ${named}, not '${kek.kekId}' (${version})`;
          return;
        }
        asked.push({ index, item: { ciphertext, context: transit.context(row), key_version: version } });
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        reasons[index] = err.reason;
      }
    });
    const { outcomes } = await this.send(asked.map((a) => a.item));
    asked.forEach((a, i) => {
      const outcome = outcomes[i]!;
      if ('refused' in outcome) {
        reasons[a.index] = `Vault Transit does not open it under '${kek.kekId}' (${outcome.refused})`;
      }
    });
    return reasons;
  }

  /** The items in batches of `batchSize`, one paced `rewrap` request each; outcomes in item order. */
  private async send(
    items: readonly TransitItem[],
    calls?: CallWindow,
  ): Promise<{ outcomes: TransitOutcome[]; requests: number }> {
    const batches: TransitItem[][] = [];
    for (let i = 0; i < items.length; i += this.batchSize) batches.push(items.slice(i, i + this.batchSize));
    const answered = await this.pacer.mapIn(calls, batches, async (batch) => {
      const outcomes = await this.rewrapBatch(batch);
      if (outcomes.length !== batch.length) {
        throw new KeyMaterialError(
          `Vault Transit answered ${outcomes.length} results to a batch of ${batch.length}: not written`,
          'transit',
        );
      }
      return outcomes;
    });
    return { outcomes: answered.flat(), requests: batches.length };
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

function transitOf(codec: Codec): TransitValues {
  if (!codec.transit) {
    throw new ConfigError(
      'the KEKs are in Vault Transit, but this target stores values sealed with key bytes: Transit serves rekey’s own table only',
    );
  }
  return codec.transit;
}
