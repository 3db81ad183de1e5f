// The rewrap engine's crypto for KEKs that never leave AWS KMS: each row's DEK moves from one KMS key to another
// with ReEncrypt, inside KMS, so no plaintext DEK exists in the worker. The one exception is the move of a keyspace
// into KMS (importRows): a DEK under a KEK held locally is opened here and given to KMS with Encrypt. Calls are paced
// (bounded concurrency, a steady rate); throttling is ridden out by the SDK's backoff (AWS_MAX_ATTEMPTS), then by
// Temporal's retry.
import { EncryptCommand, ReEncryptCommand, type KMSClient } from '@aws-sdk/client-kms';
import type { Codec, KmsValues, Row } from '../codec/sealed-format';
import type { RewrapRowsOptions, RewrapRowsResult, RowKek, RowRewrap } from '../rewrap/rewrap-rows';
import { releaseKey, scheduleKey } from './aes-gcm';
import { BATCHES_AHEAD, type CallWindow, type RequestPacer } from './request-pacer';
import type { RowCrypto } from './row-crypto';
import { ConfigError, UnreadableValueError } from '../errors';

/** The key ARN to use for a KEK of a unit of work (checked against its fingerprint and its state in KMS). */
export type ArnFor = (kek: RowKek) => string;

/** The answers of KMS that mean "not this key, not this context, or tampered": the row, not the call, is at fault. */
export const KMS_REFUSED: ReadonlySet<string> = new Set(['InvalidCiphertextException', 'IncorrectKeyException']);

/** One counted KMS call (KmsKeys.request): errors no retry fixes mapped, except those `callerHandles` names. */
export type KmsRequest = <T>(
  operation: string,
  run: () => Promise<T>,
  options?: { iam?: string; callerHandles?: ReadonlySet<string> },
) => Promise<T>;

/** A KMS key for one call: the KEK id its context binds, and the key's ARN. */
export interface KmsKey {
  kekId: string;
  arn: string;
}

export const kmsKey = (kekId: string, arn: string): KmsKey => ({ kekId, arn });

/** A ReEncrypt of one row's blob from `source` to `target`, each with the row's context under its own KEK id. */
export function reEncryptInput(kms: KmsValues, row: Row, blob: Buffer, source: KmsKey, target: KmsKey) {
  return {
    CiphertextBlob: blob,
    SourceKeyId: source.arn,
    SourceEncryptionContext: kms.context(row, source.kekId),
    DestinationKeyId: target.arn,
    DestinationEncryptionContext: kms.context(row, target.kekId),
  };
}

type Outcome = { write: RowRewrap } | { failure: string } | undefined;

export class KmsRowCrypto implements RowCrypto {
  readonly threads = 0;

  constructor(
    private readonly client: KMSClient,
    private readonly pacer: RequestPacer,
    private readonly arnFor: ArnFor,
    private readonly request: KmsRequest,
  ) {}

  async rewrap(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    const kms = kmsOf(codec);
    const source = kmsKey(from.kekId, this.arnFor(from));
    const target = kmsKey(to.kekId, this.arnFor(to));
    let requests = 0;
    const outcomes = await this.pacer.mapIn(options.calls, rows, async (row, index): Promise<Outcome> => {
      let blob: Buffer;
      try {
        blob = kms.blob(row);
      } catch (err) {
        if (!(err instanceof UnreadableValueError)) throw err;
        return options.others ? undefined : { failure: err.reason };
      }
      // A dry run moves nothing: it asks KMS whether the row opens under `from`, re-encrypting it to `from` itself.
      requests++;
      const moved = await this.reEncrypt(kms, row, blob, source, options.dryRun ? source : target);
      if (moved) {
        return { write: { index, relabel: options.others, values: options.dryRun ? [] : [kms.value(moved)] } };
      }
      // A row on a third KEK that says so is left alone.
      if (options.others) return undefined;
      requests++;
      return (
        (await this.alreadyUnder(kms, row, blob, target, index, options.dryRun)) ?? {
          failure: `KMS opens it under neither '${from.kekId}' nor '${to.kekId}' (wrong key, context or tampered)`,
        }
      );
    });
    return collect(outcomes, requests);
  }

  /**
   * Moves rows from a KEK held locally (`from`, its bytes) into KMS (`to`): each DEK is opened here and sent to KMS
   * with Encrypt under the row's context, then zeroized. The one way a plaintext DEK reaches KMS: a DEK under key
   * bytes has no other way in. A row already in the KMS form is checked under `to` (ReEncrypt to itself) and only
   * relabelled; with `others`, rows that do not open under `from` are left alone.
   */
  async importRows(
    codec: Codec,
    from: RowKek,
    to: RowKek,
    rows: readonly Row[],
    options: RewrapRowsOptions,
  ): Promise<RewrapRowsResult> {
    const kms = kmsOf(codec);
    const target = kmsKey(to.kekId, this.arnFor(to));
    const key = scheduleKey(from.key);
    let requests = 0;
    try {
      const outcomes = await this.pacer.mapIn(options.calls, rows, async (row, index): Promise<Outcome> => {
        if (kms.is(row)) {
          // A KMS blob is under no local KEK: on a third KEK, or (labelled `from`) already under `to`.
          if (options.others) return undefined;
          requests++;
          return (
            (await this.alreadyUnder(kms, row, kms.blob(row), target, index, options.dryRun)) ?? {
              failure: `KMS does not open it under '${to.kekId}' and '${from.kekId}' is no KMS key`,
            }
          );
        }
        let dek: Buffer;
        try {
          dek = codec.open(key, row, from.kekId);
        } catch (err) {
          if (!(err instanceof UnreadableValueError)) throw err;
          return options.others ? undefined : { failure: err.reason };
        }
        try {
          if (options.dryRun) return { write: { index, relabel: options.others, values: [] } };
          requests++;
          return { write: { index, relabel: options.others, values: [await this.encrypt(kms, row, dek, target)] } };
        } finally {
          dek.fill(0);
        }
      });
      return collect(outcomes, requests);
    } finally {
      releaseKey(key);
    }
  }

  /**
   * The stored value of a plaintext DEK given to KMS with Encrypt under `target`, bound by the row's context under
   * its KEK id: the one call by which a DEK under key bytes enters KMS. The caller zeroizes `dek`.
   */
  async encrypt(kms: KmsValues, row: Row, dek: Buffer, target: KmsKey): Promise<Buffer> {
    const sealed = await this.request(
      'Encrypt',
      () =>
        this.client.send(
          new EncryptCommand({ KeyId: target.arn, Plaintext: dek, EncryptionContext: kms.context(row, target.kekId) }),
        ),
      { iam: 'kms:Encrypt' },
    );
    return kms.value(sealed.CiphertextBlob!);
  }

  /**
   * A row labelled `from` whose blob is already under `target` (ReEncrypt to itself): only its label is put right,
   * its value written back as it is. Undefined when KMS does not open it there.
   */
  private async alreadyUnder(
    kms: KmsValues,
    row: Row,
    blob: Buffer,
    target: KmsKey,
    index: number,
    dryRun: boolean,
  ): Promise<Outcome> {
    if (!(await this.reEncrypt(kms, row, blob, target, target))) return undefined;
    return { write: { index, relabel: true, values: dryRun ? [] : [kms.value(blob)] } };
  }

  /** A slice's batches run their calls in one window of REKEY_AWS_KMS_CONCURRENCY (RowCrypto.pipeline). */
  pipeline(): { calls: CallWindow; batches: number } {
    return { calls: this.pacer.window(), batches: BATCHES_AHEAD };
  }

  async check(codec: Codec, kek: RowKek, rows: readonly Row[]): Promise<(string | undefined)[]> {
    const kms = kmsOf(codec);
    const key = kmsKey(kek.kekId, this.arnFor(kek));
    return this.pacer.map(rows, async (row) => {
      let blob: Buffer;
      try {
        blob = kms.blob(row);
      } catch (err) {
        if (err instanceof UnreadableValueError) return err.reason;
        throw err;
      }
      const opened = await this.reEncrypt(kms, row, blob, key, key);
      return opened ? undefined : `KMS does not open it under '${kek.kekId}' (wrong key, context or tampered)`;
    });
  }

  /**
   * ReEncrypt of one row's blob from `source` to `target` (the same key: a check that it opens, with no plaintext).
   * Undefined when KMS refuses the blob under `source`, or opened it with another key than the one asked for (moto
   * does not check SourceKeyId; the answer names the key that decrypted).
   */
  private async reEncrypt(
    kms: KmsValues,
    row: Row,
    blob: Buffer,
    source: KmsKey,
    target: KmsKey,
  ): Promise<Uint8Array | undefined> {
    let answer;
    try {
      // Access, state and configuration errors fail the activity at once, naming the IAM actions; the rest retries.
      answer = await this.request(
        'ReEncrypt',
        () => this.client.send(new ReEncryptCommand(reEncryptInput(kms, row, blob, source, target))),
        { iam: 'kms:ReEncryptFrom and kms:ReEncryptTo', callerHandles: KMS_REFUSED },
      );
    } catch (err) {
      if (KMS_REFUSED.has((err as { name?: string }).name ?? '')) return undefined;
      throw err;
    }
    if (answer.SourceKeyId !== undefined && answer.SourceKeyId !== source.arn) return undefined;
    return answer.CiphertextBlob;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

function kmsOf(codec: Codec): KmsValues {
  if (!codec.kms) {
    throw new ConfigError(
      'the KEKs are in AWS KMS, but this target stores values sealed with key bytes: KMS serves rekey’s own table only',
    );
  }
  return codec.kms;
}

/** A batch's result from its rows' outcomes, in row order. */
function collect(outcomes: readonly Outcome[], requests: number): RewrapRowsResult {
  const result: RewrapRowsResult = { writes: [], failures: [], requests };
  outcomes.forEach((outcome, index) => {
    if (outcome === undefined) return;
    if ('write' in outcome) result.writes.push(outcome.write);
    else result.failures.push({ index, reason: outcome.failure });
  });
  return result;
}
