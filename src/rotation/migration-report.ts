// What a migration (`rekey migrate-dek`) reports: its answer to the progress query and its result. Plain data, apart
// from the workflow (src/workflows/migrate-dek.ts) so that its messages, the run status and the CLI read it without
// importing the workflow.
import type { FieldCounters } from '../rewrap/field-counters';
import type { FieldFailure } from '../rewrap/migrate-fields';
import type { RunFailure } from '../errors';

export interface FieldReport {
  name: string;
  group: string;
  where: string;
  /** Legacy values when the run planned its first pass. */
  legacyAtStart: number;
  counters: FieldCounters;
}

export interface MigrationReport {
  target: string;
  /** The keyspace every step checks its worker's target against (absent in runs of builds before keyspaces). */
  keyspace?: string;
  /** When the migration began (epoch ms, workflow time); absent in reports of runs started before it was kept. */
  startedAt?: number;
  dryRun: boolean;
  /** The one tenant the run migrates, if it was given one. */
  tenantId?: string;
  kekId?: string;
  /** Why `kekId`, when the table chose it (the registry recorded none and the request named none). */
  kekChoice?: string;
  /** Rows of the target's table of DEKs when the run planned ("Tenants scanned"). */
  tenants?: number;
  phase: 'planning' | 'migrating' | 'done';
  /** How the run ended; 'failed': it failed (in `phase`), and `failure` says with what, set before it is thrown. */
  outcome?: 'completed' | 'aborted' | 'dry-run' | 'failed';
  failure?: RunFailure;
  paused: boolean;
  /** Parts running now: paused with none running, nothing is being written. */
  partsRunning?: number;
  abortReason?: string;
  /** A control signal the run could not honour, and why (an update is refused with the reason instead). */
  note?: string;
  passes: number;
  fields: FieldReport[];
  totals: FieldCounters;
  /** Legacy values still there at the end (the unreadable ones, and any a writer put back meanwhile). */
  legacyLeft?: number;
  /** Values that did not decrypt (bounded list): reported, counted, never written. */
  failures: FieldFailure[];
  /** The dry run's list of tenants holding legacy values. */
  byTenant?: { tenant: string; legacy: number }[];
}
