// The activities of `rekey migrate-dek` (the migrateDek workflow): plan the parts, migrate one part, count what is
// left. Every statement is in src/store (RowFieldsStore, FieldStore, TargetStore); the engine is src/rewrap/migrate-rows.ts.
import { Context } from '@temporalio/activity';
import { canUnwrap } from '../envelope/kek-lifecycle';
import type { EngineKek } from '../keyring/cipher';
import { migrateFieldSlice, type FieldCheckpoint, type FieldFailure } from '../rewrap/migrate-fields';
import { migrateRowSlice, type RowCheckpoint } from '../rewrap/migrate-rows';
import { ThreadedRowCrypto, type RowCrypto } from '../crypto/row-crypto';
import { RowFieldsStore, rowGroups } from '../store/row-fields-store';
import { rangesFromBoundaries, type TenantRange } from '../rotation/slices';
import { FieldStore, type FieldCounters } from '../store/field-store';
import type { TargetRuntime } from '../targets/runtime';
import { describeTable, GENERATION } from '../targets/target';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { withKeks } from './keys';
import { firstContact, legacyLeft, provesItReads, type LegacyLeft } from './target-checks';
import { InvalidRotationError, KekNotWritableError, RotationUnderWayError, TargetConfigError } from '../errors';

export interface FieldPlan {
  /** Index into the target's fields. */
  field: number;
  name: string;
  group: string;
  where: string;
  legacy: number;
  current: number;
  ranges: TenantRange[];
}

/** Fields of one table read and written together, row by row (see RowFieldsStore), and the parts of their rows. */
export interface RowGroupPlan {
  /** Indexes into the target's fields. */
  fields: number[];
  ranges: TenantRange[];
}

export interface MigrationPlan {
  /** The KEK new DEKs are wrapped with: the target's active one (a generation, for Mycelium). */
  kekId: string;
  /** Why `kekId`, when the table chose it (no KEK recorded in the registry and none named): printed with the report. */
  kekChoice?: string;
  /** Rows of the target's table of DEKs ("Tenants scanned"). */
  tenants: number;
  fields: FieldPlan[];
  /** The dry run's list: tenants with the most legacy values, per tenant. */
  byTenant?: { tenant: string; legacy: number }[];
  /** Asked for with `byRow`: the fields grouped by the rows that hold them, each group split into parts. */
  groups?: RowGroupPlan[];
}

export interface FieldSliceArgs {
  target: string;
  keyspace?: string;
  field: number;
  kekId: string;
  range: TenantRange;
  /** Only the values under this tenant's DEK (`--tenant-id`). */
  tenant?: string;
  batchSize: number;
  dryRun: boolean;
  timeBudgetMs: number;
  progressKey: string;
  countExisting: boolean;
}

export interface RowSliceArgs extends Omit<FieldSliceArgs, 'field'> {
  /** Indexes into the target's fields: one group of rowGroups. */
  fields: number[];
}

export interface RowSliceOutcome {
  /** By field of the group, in its order. */
  counters: FieldCounters[];
  cursor: string;
  done: boolean;
  failures: FieldFailure[];
}

export interface FieldSliceOutcome {
  counters: FieldCounters;
  cursor: string;
  done: boolean;
  failures: FieldFailure[];
}

const LISTED_TENANTS = 50;
/** DEKs tried under the current key when the table, not the registry, says which generation it is. */
const PROOF_SAMPLE = 20;

/** What a part of a migration (by field or by row) is given: its range, its settings and where its last attempt got to. */
function sliceInput<C>(args: Omit<FieldSliceArgs, 'field'>, context: Context) {
  return {
    after: args.range.after,
    until: args.range.until,
    ...(args.tenant !== undefined && { tenant: args.tenant }),
    batchSize: args.batchSize,
    dryRun: args.dryRun,
    timeBudgetMs: args.timeBudgetMs,
    progressKey: args.progressKey,
    countExisting: args.countExisting,
    resumeFrom: context.info.heartbeatDetails as C | undefined,
  };
}

/** A part heartbeats each batch's checkpoint and stops at a batch boundary once cancelled (paused or aborted). */
function sliceHooks<C>(context: Context) {
  return {
    onBatch: (checkpoint: C) => context.heartbeat(checkpoint),
    shouldStop: () => context.cancellationSignal.aborted,
  };
}

export function createMigrationActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);
  const stores = new Map<string, Promise<FieldStore>>();

  function fieldsOf(runtime: TargetRuntime) {
    const { fields = [] } = runtime.definition;
    if (fields.length === 0) {
      throw new TargetConfigError(
        `target '${runtime.definition.name}' has no encrypted fields to migrate: list them under its 'fields'`,
      );
    }
    return fields;
  }

  function fieldStore(runtime: TargetRuntime, index: number): Promise<FieldStore> {
    const key = `${runtime.definition.name}/${index}`;
    let store = stores.get(key);
    if (!store) {
      const field = fieldsOf(runtime)[index];
      if (!field) throw new TargetConfigError(`target '${runtime.definition.name}' has no field #${index}`);
      const created = new FieldStore(runtime.db, runtime.definition.name, field);
      store = created.inspect().then(() => created);
      store.catch(() => stores.delete(key));
      stores.set(key, store);
    }
    return store;
  }

  /**
   * The current KEK as the table says it, for a target whose registry records none and whose request names none:
   * the one label every stored DEK carries, or, with no DEK stored yet, the label column's default (Mycelium's
   * `kek_version` defaults to 1). Several labels, or none and no default: the request must name it.
   */
  async function currentByTable(runtime: TargetRuntime): Promise<{ kekId: string; why: string; proveOn?: boolean }> {
    const { definition, store } = runtime;
    const table = describeTable(definition.table);
    const column = `${table}.${definition.label.column}`;
    const named = `name the generation the application's current key is (--kek-version N, kek_version in the admin API)`;
    const { byLabel, withoutValue } = await store.countsByLabel();
    const labels = Object.entries(byLabel);
    if (labels.length > 1) {
      throw new InvalidRotationError(
        `target '${definition.name}' has no current KEK recorded yet, and its ${definition.noun}s are on ${labels.map(([id, n]) => `${id} (${n})`).join(', ')}: ${named}`,
      );
    }
    if (labels.length === 1) {
      const [kekId, rows] = labels[0]!;
      return {
        kekId,
        why: `rekey's registry records none yet, and every ${definition.noun} of ${table} (${rows}) is labelled ${kekId}`,
        proveOn: true,
      };
    }
    const fallback = await store.labelDefault();
    if (fallback === undefined) {
      throw new InvalidRotationError(
        `target '${definition.name}' has no current KEK recorded yet, ${table} holds no ${definition.noun} and ${column} has no default: ${named}`,
      );
    }
    return {
      kekId: fallback,
      why: `rekey's registry records none yet, ${table} holds no ${definition.noun} yet (${withoutValue} row(s) without one), and ${column} defaults to ${fallback}`,
    };
  }

  /**
   * The table's choice is proven before anything is written: a sample of the DEKs labelled with it opens under the
   * key this worker holds as current. A worker whose current key is another generation is refused, not let seed
   * the registry with the wrong fingerprint.
   */
  async function provesCurrent(runtime: TargetRuntime, kekId: string, why: string): Promise<void> {
    const sample = await runtime.store.sampleOnLabel(kekId, PROOF_SAMPLE);
    const opened = await withKeks(runtime, { from: kekId, to: kekId }, [kekId], deps.crypto, async ([kek], crypto) =>
      (await crypto.check(runtime.store.codec, kek!, sample)).filter((r) => r === undefined),
    );
    if (sample.length > 0 && opened.length === 0) {
      throw new InvalidRotationError(
        `target '${runtime.definition.name}': ${why}, but none of ${sample.length} sampled ${runtime.definition.noun}s opens under the current key of ${runtime.keyring.description}: that key is not generation ${kekId}; name the generation it is (--kek-version N), or give the worker generation ${kekId}'s key`,
      );
    }
  }

  /**
   * Runs `use` with the KEK the migration wraps new DEKs with first, then the other KEKs held that are not retired
   * (legacy values and DEKs are tried under each), each checked against the registry's fingerprint; zeroized after.
   */
  async function withMigrationKeks<T>(
    runtime: TargetRuntime,
    kekId: string,
    use: (keks: EngineKek[], crypto: RowCrypto) => Promise<T>,
  ): Promise<T> {
    runtime.keyring.nameRotation(kekId, kekId);
    const retired = new Set((await runtime.registry.list()).filter((k) => !canUnwrap(k.state)).map((k) => k.kekId));
    const held = new Set((await runtime.keyring.held()).map((k) => k.kekId));
    const others = [...held].sort().filter((id) => id !== kekId && !retired.has(id));
    return withKeks(runtime, { from: kekId, to: kekId }, [kekId, ...others], deps.crypto, use);
  }

  return {
    /**
     * Checks the target, its fields and its current KEK, and splits each field's legacy values into parts. Refuses
     * while a rotation of the target is under way: the legacy values are pinned to the KEK it is replacing.
     */
    async planFieldMigration(args: {
      target: string;
      keyspace?: string;
      kekVersion?: string;
      /** Only the values under this tenant's DEK: it must be a row of the target's table. */
      tenant?: string;
      slices: number;
      dryRun: boolean;
      /** Plan parts of rows (every legacy field of a row in one pass) rather than of one field each. */
      byRow?: boolean;
    }): Promise<MigrationPlan> {
      const runtime = await targets.forRequest(args);
      const { registry, keyring, definition } = runtime;
      const fields = fieldsOf(runtime);
      await keyring.reload();
      const registered = await registry.list();
      const rotating = registered.find((k) => k.state === 'provisioned' || k.state === 'decrypt_only');
      if (rotating) {
        throw new RotationUnderWayError(
          `a rotation of target '${definition.name}' is under way (KEK '${rotating.kekId}' is ${rotating.state}): finish or abort it before migrating`,
        );
      }
      const active = registered.find((k) => k.state === 'active');
      if (args.kekVersion !== undefined && active !== undefined && active.kekId !== args.kekVersion) {
        throw new InvalidRotationError(
          `target '${definition.name}': the registry's current KEK is '${active.kekId}', not '${args.kekVersion}': leave out the KEK version, or check which one the application uses`,
        );
      }
      // Without a recorded KEK or a named one, the table says which generation is current, and the plan says so.
      const fromTable =
        active === undefined && args.kekVersion === undefined ? await currentByTable(runtime) : undefined;
      const kekId = active?.kekId ?? args.kekVersion ?? fromTable!.kekId;
      if (definition.label.kind === 'generation' && !GENERATION.test(kekId)) {
        throw new InvalidRotationError(
          `target '${definition.name}' labels KEKs with generations: '${kekId}' is not one`,
        );
      }
      keyring.nameRotation(kekId, kekId);
      await firstContact(runtime);
      if (fromTable?.proveOn) await provesCurrent(runtime, kekId, fromTable.why);
      const { tenant } = args;
      if (tenant !== undefined && !(await runtime.store.hasRow(tenant))) {
        throw new InvalidRotationError(
          `target '${definition.name}' has no tenant '${tenant}' in ${describeTable(definition.table)}: check the tenant id`,
        );
      }
      if (!active && !args.dryRun) await registry.seedActive(kekId, await keyring.fingerprintOf(kekId));
      // The fingerprint this worker holds must be the registry's before anything else happens.
      await withMigrationKeks(runtime, kekId, () => Promise.resolve());

      const plans: FieldPlan[] = [];
      for (let index = 0; index < fields.length; index++) {
        const store = await fieldStore(runtime, index);
        await provesItReads(store, fields[index]!.name);
        const { legacy, current } = await store.count(store.db, {
          after: '',
          until: null,
          ...(tenant !== undefined && { tenant }),
        });
        const fractions = Array.from({ length: args.slices - 1 }, (_, i) => (i + 1) / args.slices);
        // Planned by row, the parts are the groups' (below): a field's own would be a scan for nothing.
        const ranges =
          args.byRow || args.slices <= 1 || legacy < args.slices * 2
            ? rangesFromBoundaries([])
            : rangesFromBoundaries(await store.boundaries(fractions, tenant));
        plans.push({
          field: index,
          name: store.field.name,
          group: store.field.group,
          where: store.where,
          legacy,
          current,
          ranges,
        });
      }
      let byTenant: MigrationPlan['byTenant'];
      if (args.dryRun) {
        const counts = new Map<string, number>();
        for (let index = 0; index < fields.length; index++) {
          const store = await fieldStore(runtime, index);
          for (const { tenant: owner, legacy } of await store.legacyByTenant(LISTED_TENANTS, tenant)) {
            counts.set(owner, (counts.get(owner) ?? 0) + legacy);
          }
        }
        byTenant = [...counts]
          .map(([tenant, legacy]) => ({ tenant, legacy }))
          .sort((a, b) => b.legacy - a.legacy || a.tenant.localeCompare(b.tenant))
          .slice(0, LISTED_TENANTS);
      }
      const { byLabel, withoutValue } = await runtime.store.countsByLabel();
      const tenants = tenant !== undefined ? 1 : Object.values(byLabel).reduce((n, rows) => n + rows, withoutValue);
      let groups: RowGroupPlan[] | undefined;
      if (args.byRow) {
        const stores = await Promise.all(fields.map((_, index) => fieldStore(runtime, index)));
        groups = [];
        for (const members of rowGroups(stores)) {
          const rows = new RowFieldsStore(members.map((i) => stores[i]!));
          const legacy = members.reduce((n, i) => n + plans[i]!.legacy, 0);
          const fractions = Array.from({ length: args.slices - 1 }, (_, i) => (i + 1) / args.slices);
          const ranges =
            args.slices <= 1 || legacy < args.slices * 2
              ? rangesFromBoundaries([])
              : rangesFromBoundaries(await rows.boundaries(fractions, tenant));
          groups.push({ fields: members, ranges });
        }
      }
      return {
        kekId,
        ...(fromTable && { kekChoice: `KEK ${kekId}: ${fromTable.why}` }),
        tenants,
        fields: plans,
        ...(byTenant && { byTenant }),
        ...(groups && { groups }),
      };
    },

    /** One part of one field: migrates until the range is done or the time budget is spent; heartbeats each batch. */
    async migrateFieldSlice(args: FieldSliceArgs): Promise<FieldSliceOutcome> {
      const context = Context.current();
      const runtime = await targets.forRequest(args);
      const fields = await fieldStore(runtime, args.field);
      return withMigrationKeks(runtime, args.kekId, async (keks) => {
        const registered = await runtime.registry.get(args.kekId);
        if (!args.dryRun && registered?.state !== 'active')
          throw new KekNotWritableError(args.target, args.kekId, registered?.state ?? null);
        const result = await migrateFieldSlice(
          { fields, deks: runtime.store, keks },
          sliceInput<FieldCheckpoint>(args, context),
          sliceHooks(context),
        );
        // Cancelled (paused or aborted): it stopped at a batch boundary and returns what it did (see rewrapSlice).
        return result;
      });
    },

    /**
     * One part of a group of fields of one table: each row read once with all its legacy fields and written once,
     * until the range is done or the time budget is spent; heartbeats each batch.
     */
    async migrateRowSlice(args: RowSliceArgs): Promise<RowSliceOutcome> {
      const context = Context.current();
      const runtime = await targets.forRequest(args);
      const rows = new RowFieldsStore(await Promise.all(args.fields.map((index) => fieldStore(runtime, index))));
      return withMigrationKeks(runtime, args.kekId, async (keks, crypto) => {
        const registered = await runtime.registry.get(args.kekId);
        if (!args.dryRun && registered?.state !== 'active')
          throw new KekNotWritableError(args.target, args.kekId, registered?.state ?? null);
        // The worker's crypto threads, as the rotation uses them (a store that does its own crypto has none here).
        const threads = crypto instanceof ThreadedRowCrypto ? crypto : undefined;
        return migrateRowSlice(
          { rows, fieldIndexes: args.fields, deks: runtime.store, keks, ...(threads && { threads }) },
          sliceInput<RowCheckpoint>(args, context),
          sliceHooks(context),
        );
      });
    },

    /** Legacy values left in each field of the target, or of one tenant (none for a target without fields). */
    async legacyValuesLeft({
      tenant,
      ...on
    }: {
      target: string;
      keyspace?: string;
      tenant?: string;
    }): Promise<LegacyLeft[]> {
      return legacyLeft(await targets.forRequest(on), tenant);
    },
  };
}
