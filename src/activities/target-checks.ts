// Checks on a target's tables that more than one activity makes before it writes: that rekey reads what is there,
// and what legacy values its fields still hold.
import { FieldStore } from '../store/field-store';
import type { TargetRuntime } from '../targets/runtime';
import { describeTable } from '../targets/target';
import { TargetSchemaError } from '../errors';

const FIRST_CONTACT_SAMPLE = 200;
const FIELD_SAMPLE = 50;

/** Before rekey writes to a table it did not create, it proves that it can read it. */
export async function firstContact(runtime: TargetRuntime): Promise<void> {
  const sample = await runtime.store.sampleAny(FIRST_CONTACT_SAMPLE);
  if (sample.length === 0) return;
  const reasons = sample.map((row) => runtime.store.codec.check(row));
  if (reasons.every((reason) => reason !== undefined)) {
    throw new TargetSchemaError(
      `target '${runtime.definition.name}': the format reads none of ${sample.length} sampled rows of ${describeTable(runtime.definition.table)} ` +
        `(first: ${reasons[0]}); check the target's format: nothing was written`,
    );
  }
}

export interface LegacyLeft {
  name: string;
  where: string;
  legacy: number;
}

/** Legacy values left in each field of a target: a KEK rotation waits for none (they are pinned to its KEK). */
export async function legacyLeft(runtime: TargetRuntime, tenant?: string): Promise<LegacyLeft[]> {
  const left: LegacyLeft[] = [];
  for (const field of runtime.definition.fields ?? []) {
    const store = new FieldStore(runtime.db, runtime.definition.name, field);
    await store.inspect();
    const range = { after: '', until: null, ...(tenant !== undefined && { tenant }) };
    left.push({ name: field.name, where: store.where, legacy: (await store.count(store.db, range)).legacy });
  }
  return left;
}

/** Before rekey writes a field of a table it did not create, it proves that it reads the values there. */
export async function provesItReads(store: FieldStore, name: string): Promise<void> {
  const sample = await store.readLegacy(store.db, { after: '', until: null }, FIELD_SAMPLE);
  if (sample.length === 0) return;
  const reasons = sample.map((row) => store.legacy.check({ value: row.value }));
  if (reasons.every((reason) => reason !== undefined)) {
    throw new TargetSchemaError(
      `field ${name} (${store.where}): the legacy format reads none of ${sample.length} sampled values (first: ${reasons[0]}); check the field's formats: nothing was written`,
    );
  }
}
