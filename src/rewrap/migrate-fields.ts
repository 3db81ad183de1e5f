// A part of one encrypted field (`rekey migrate-dek` runs planned before parts of rows, MIGRATION_ROWS_PATCH): the
// same engine as a part of rows (src/rewrap/migrate-rows.ts), given a group of that one field and the part's own
// progress row, with its checkpoint and counters in the one-field shape those runs heartbeat and report.
import type { EngineKek as ResolvedKek } from '../keyring/cipher';
import type { FieldStore } from '../store/field-store';
import { RowFieldsStore } from '../store/row-fields-store';
import type { TargetStore } from '../store/target-store';
import type { FieldCounters } from './field-counters';
import { migrateRowSlice, type FieldFailure, type RowSliceInput } from './migrate-rows';

export type { FieldFailure } from './migrate-rows';

export interface FieldSliceInput extends Omit<RowSliceInput, 'progressKeys' | 'resumeFrom'> {
  /** Where a previous attempt got to (heartbeat details): used in a dry run, which keeps no progress row. */
  resumeFrom?: FieldCheckpoint;
}

export interface FieldCheckpoint {
  cursor: string;
  counters: FieldCounters;
}

export interface FieldSliceResult extends FieldCheckpoint {
  done: boolean;
  failures: FieldFailure[];
}

export interface FieldSliceDependencies {
  fields: FieldStore;
  /** The target's table of wrapped DEKs. */
  deks: TargetStore;
  /** The KEK new DEKs are wrapped with (the active one), then any other held KEK: tried in order. */
  keks: ResolvedKek[];
}

export interface FieldSliceHooks {
  onBatch?(checkpoint: FieldCheckpoint): void;
  shouldStop?(): boolean;
}

/** Moves one field's legacy values over one id range: a part of rows whose group is that field, under the part's key. */
export async function migrateFieldSlice(
  deps: FieldSliceDependencies,
  { resumeFrom, ...input }: FieldSliceInput,
  hooks: FieldSliceHooks = {},
): Promise<FieldSliceResult> {
  const result = await migrateRowSlice(
    { rows: new RowFieldsStore([deps.fields]), fieldIndexes: [0], deks: deps.deks, keks: deps.keks },
    {
      ...input,
      progressKeys: [input.progressKey],
      ...(resumeFrom && { resumeFrom: { cursor: resumeFrom.cursor, counters: [resumeFrom.counters] } }),
    },
    {
      onBatch: ({ cursor, counters }) => hooks.onBatch?.({ cursor, counters: counters[0]! }),
      shouldStop: () => hooks.shouldStop?.() ?? false,
    },
  );
  return { cursor: result.cursor, counters: result.counters[0]!, done: result.done, failures: result.failures };
}
