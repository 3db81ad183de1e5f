// The retire and destroy steps' proof of a target's legacy values (Mycelium's v1: a value sealed by the KEK itself,
// no DEK between; docs/02: the target's `fields`): which of them open under the KEK the step retires or destroys.
// A separate read under the KEK's registry row lock, not part of the pre-pass: a rotation starts only with none left
// or with the operator's reason (validateRotation), and `rekey migrate-dek` moves them, so they are few by nature
// (docs/13-irreversible-steps.md, "Legacy values").
import type { PoolClient } from 'pg';
import { LegacyValuesRemainError } from '../errors';
import type { DekCipher } from '../keyring/cipher';
import { FieldStore } from '../store/field-store';
import type { TargetRuntime } from '../targets/runtime';

/** Legacy values read per statement. */
const LEGACY_BATCH = 2_000;
/** How many of them a refusal names. */
const FIRST_NAMED = 10;

export interface LegacyProof {
  /** Legacy values that open under the KEK, or that could not be tried under it (counted: fail closed). */
  needed: number;
  /** Per field with any: how many, and where. */
  fields: { name: string; where: string; needed: number }[];
  /** The first few, with why (`tenantId` is the row's id in its field, as FieldStore reads it). */
  neededRows: { tenantId: string; reason: string }[];
  /** Legacy values read that open under no KEK tried: already lost, they do not hold the step back. */
  unreadable: number;
}

/**
 * Reads every legacy value of the target's fields in `client`'s transaction (reads only) and tries each under
 * `cipher`, the KEK `kekId`; no cipher (the store no longer gives it to this worker): each counts as needing it, and
 * says so. Plaintexts are zeroized by the crypto that opens them; nothing is written.
 */
export async function legacyValuesUnder(
  runtime: TargetRuntime,
  client: PoolClient,
  kekId: string,
  cipher: DekCipher | undefined,
): Promise<LegacyProof> {
  const proof: LegacyProof = { needed: 0, fields: [], neededRows: [], unreadable: 0 };
  for (const field of runtime.definition.fields ?? []) {
    const store = new FieldStore(runtime.db, runtime.definition.name, field);
    await store.inspect();
    let needed = 0;
    let after = '';
    for (;;) {
      const rows = await store.readLegacy(client, { after, until: null }, LEGACY_BATCH);
      if (rows.length === 0) break;
      after = rows[rows.length - 1]!.id;
      let reasons: (string | undefined)[];
      let untried: string | undefined;
      try {
        reasons = cipher
          ? await cipher.checkRows(
              store.legacy,
              rows.map((row) => ({ value: row.value, tenant: row.tenant })),
            )
          : rows.map(() => 'not tried');
        if (!cipher) untried = `could not be tried under '${kekId}': this worker's key store no longer gives it`;
      } catch (err) {
        reasons = rows.map(() => 'not tried');
        untried = `could not be tried under '${kekId}' (${err instanceof Error ? err.name : 'error'})`;
      }
      rows.forEach((row, i) => {
        const opens = untried === undefined && reasons[i] === undefined;
        if (!opens && untried === undefined) {
          proof.unreadable++;
          return;
        }
        needed++;
        if (proof.neededRows.length < FIRST_NAMED) {
          proof.neededRows.push({
            tenantId: row.id,
            reason: untried
              ? `legacy value of field ${field.name} (${store.where}) ${untried}: counted as needing it`
              : `legacy value of field ${field.name} (${store.where}) encrypted directly by '${kekId}' (no DEK): it opens only under it`,
          });
        }
      });
      if (rows.length < LEGACY_BATCH) break;
    }
    if (needed > 0) proof.fields.push({ name: field.name, where: store.where, needed });
    proof.needed += needed;
  }
  return proof;
}

/** `3 in public."user" (mfa), 1 in …` */
export function legacyWhere(proof: Pick<LegacyProof, 'fields'>): string {
  return proof.fields.map((field) => `${field.needed} in ${field.where}`).join(', ');
}

/**
 * The one refusal for legacy values that a KEK's retirement would make unreadable, in the same words wherever it is
 * raised: at the rotation's start (`legacy`: every legacy value of the target's fields, `kekId` unknown yet) and at
 * its retire step (those that open under `kekId`, the first few named). What is left, where, why, and both ways on.
 */
export function legacyValuesRemain(
  target: string,
  legacy: Pick<LegacyProof, 'needed' | 'fields'> & Partial<Pick<LegacyProof, 'neededRows'>>,
  refusing: string,
  kekId?: string,
): LegacyValuesRemainError {
  const first = legacy.neededRows ?? [];
  return new LegacyValuesRemainError(
    `target '${target}' still holds ${legacy.needed} legacy value(s) encrypted directly by its KEK${kekId === undefined ? '' : ` '${kekId}'`} (${legacyWhere(legacy)}): ` +
      `they would become unreadable once the KEK retires; ${refusing}. ` +
      (first.length === 0
        ? ''
        : `The first ${first.length}: ${first.map((row) => `${row.tenantId} (${row.reason})`).join(', ')}. `) +
      `Run \`rekey migrate-dek --target ${target}\` first, or give the reason to go on when the rotation starts: --allow-legacy-values <reason> (allow_legacy_values in the admin API), recorded in the run`,
  );
}
