import type { Pool, PoolClient } from 'pg';
import { assertTransition, type KekState } from '../envelope/kek-lifecycle';
import { inTransaction } from './connect';
import { KekFingerprintMismatchError, KekTransitionError, UnknownKekError } from '../errors';

export interface KekRecord {
  /** The target (keyspace) whose registry holds it. */
  target: string;
  kekId: string;
  state: KekState;
  fingerprint: string;
  provisionedAt: Date;
  activatedAt: Date | null;
  decryptOnlyAt: Date | null;
  retiredAt: Date | null;
  /** A retired KEK may be restored until then; absent for KEKs retired before the window existed. */
  restorableUntil?: Date | null;
  destroyedAt?: Date | null;
}

interface KekRow {
  target: string;
  kek_id: string;
  state: KekState;
  fingerprint: string;
  provisioned_at: Date;
  activated_at: Date | null;
  decrypt_only_at: Date | null;
  retired_at: Date | null;
  restorable_until: Date | null;
  destroyed_at: Date | null;
}

const toRecord = (row: KekRow): KekRecord => ({
  target: row.target,
  kekId: row.kek_id,
  state: row.state,
  fingerprint: row.fingerprint,
  provisionedAt: row.provisioned_at,
  activatedAt: row.activated_at,
  decryptOnlyAt: row.decrypt_only_at,
  retiredAt: row.retired_at,
  restorableUntil: row.restorable_until,
  destroyedAt: row.destroyed_at,
});

/** The actor of the events a rotation's own steps record (a restore or a destruction records who asked). */
export const STEP_ACTOR = 'rekey (rotation step)';

/** A step of a KEK's lifecycle, as the audit trail (rekey.kek_events) keeps it. */
export interface KekEvent {
  kekId: string;
  event: 'registered' | 'promoted' | 'superseded' | 'retired' | 'restored' | 'destroyed';
  reason: string;
  actor: string;
  at: Date;
}

const TIMESTAMP_COLUMN: Record<KekState, string> = {
  provisioned: 'provisioned_at',
  active: 'activated_at',
  decrypt_only: 'decrypt_only_at',
  retired: 'retired_at',
  destroyed: 'destroyed_at',
};

/**
 * The KEK registry of one target (keyspace) in PostgreSQL: each KEK's state, fingerprint and transition times.
 * Never key bytes.
 */
export class KekRegistry {
  constructor(
    private readonly db: Pool,
    readonly target: string,
  ) {}

  async list(): Promise<KekRecord[]> {
    const { rows } = await this.db.query<KekRow>(
      'SELECT * FROM rekey.keks WHERE target = $1 ORDER BY provisioned_at, kek_id',
      [this.target],
    );
    return rows.map(toRecord);
  }

  async get(kekId: string, client: Pool | PoolClient = this.db): Promise<KekRecord | undefined> {
    const { rows } = await client.query<KekRow>('SELECT * FROM rekey.keks WHERE target = $1 AND kek_id = $2', [
      this.target,
      kekId,
    ]);
    return rows[0] && toRecord(rows[0]);
  }

  async require(kekId: string, client: Pool | PoolClient = this.db): Promise<KekRecord> {
    const record = await this.get(kekId, client);
    if (!record) throw new UnknownKekError(kekId, `the KEK registry of target '${this.target}'`);
    return record;
  }

  async active(): Promise<KekRecord | undefined> {
    const { rows } = await this.db.query<KekRow>(`SELECT * FROM rekey.keks WHERE target = $1 AND state = 'active'`, [
      this.target,
    ]);
    return rows[0] && toRecord(rows[0]);
  }

  /**
   * Records a KEK as provisioned. Idempotent: registering the same key again is a no-op, but the same id with a
   * different fingerprint is refused (a different key under a known name would make DEKs unreadable). `actor` is who
   * the 'registered' event names: a rotation's step by default, the application that seeded it otherwise.
   */
  async register(kekId: string, fingerprint: string, actor: string = STEP_ACTOR): Promise<KekRecord> {
    await inTransaction(this.db, async (client) => {
      const { rowCount } = await client.query(
        `INSERT INTO rekey.keks (target, kek_id, state, fingerprint) VALUES ($1, $2, 'provisioned', $3)
         ON CONFLICT (target, kek_id) DO NOTHING`,
        [this.target, kekId, fingerprint],
      );
      // Once, by the step that made the row (a retried registration inserts nothing and records nothing).
      if (rowCount === 1) await this.record(client, kekId, 'registered', `fingerprint ${fingerprint}`, actor);
    });
    const record = await this.require(kekId);
    if (record.fingerprint !== fingerprint) {
      throw new KekFingerprintMismatchError(kekId, record.fingerprint, fingerprint);
    }
    return record;
  }

  /**
   * Seeds the first active KEK (from `<PREFIX>_CURRENT_KEK_ID`) when the registry has none; `actor` (who seeded it)
   * is recorded with its 'registered' event.
   */
  async seedActive(kekId: string, fingerprint: string, actor: string = STEP_ACTOR): Promise<KekRecord> {
    const record = await this.register(kekId, fingerprint, actor);
    if (record.state !== 'provisioned' || (await this.active())) return record;
    try {
      return await this.transition(kekId, 'active');
    } catch (err) {
      // Another process seeded at the same moment; the unique index kept it to one active KEK.
      if ((err as { code?: string }).code === '23505') return this.require(kekId);
      throw err;
    }
  }

  /** One checked transition, as a compare-and-swap on the state that was read. */
  async transition(kekId: string, to: KekState, client: Pool | PoolClient = this.db): Promise<KekRecord> {
    const current = await this.require(kekId, client);
    if (current.state === to) return current;
    assertTransition(kekId, current.state, to);
    const updated = await client.query<KekRow>(
      `UPDATE rekey.keks SET state = $3, ${TIMESTAMP_COLUMN[to]} = now()
       WHERE target = $1 AND kek_id = $2 AND state = $4 RETURNING *`,
      [this.target, kekId, to, current.state],
    );
    if (!updated.rows[0]) {
      throw new KekTransitionError(kekId, current.state, to, 'its state changed concurrently; retry');
    }
    return toRecord(updated.rows[0]);
  }

  /**
   * Makes `to` active and `from` decrypt-only in one transaction, only if `from` is still the active KEK
   * (or `to` already is: a retried promote is a no-op).
   */
  async promote(from: string, to: string): Promise<void> {
    await inTransaction(this.db, async (client) => {
      await client.query('SELECT 1 FROM rekey.keks WHERE target = $1 AND kek_id = ANY($2) FOR UPDATE', [
        this.target,
        [from, to],
      ]);
      const target = await this.require(to, client);
      if (target.state === 'active') return;
      const source = await this.require(from, client);
      if (source.state !== 'active') {
        throw new KekTransitionError(to, target.state, 'active', `'${from}' is ${source.state}, not the active KEK`);
      }
      assertTransition(to, target.state, 'active');
      await this.transition(from, 'decrypt_only', client);
      await this.transition(to, 'active', client);
      await this.record(client, to, 'promoted', `active in place of '${from}'`, STEP_ACTOR);
      await this.record(client, from, 'superseded', `decrypt-only: '${to}' is active`, STEP_ACTOR);
    });
  }

  /**
   * `from` becomes retired and restorable for `restoreWindowMs` (from the database's clock), inside the caller's
   * transaction, which holds the row's lock (see `lock`).
   */
  async retire(kekId: string, restoreWindowMs: number, client: PoolClient): Promise<KekRecord> {
    // Already retired (a retried step): its window stays where the first retirement put it, unless that is shorter
    // than this step's (an attempt of a build before the minimum window: finding restore-window-retry); then it is
    // open again for this step's window from now, so the restore and the destruction read the longer one.
    const current = await this.require(kekId, client);
    if (current.state === 'retired') {
      const { retiredAt, restorableUntil } = current;
      if (!retiredAt || !restorableUntil || restorableUntil.getTime() - retiredAt.getTime() >= restoreWindowMs) {
        return current;
      }
      await this.reopen(kekId, restoreWindowMs, client);
      return this.require(kekId, client);
    }
    const retired = await this.transition(kekId, 'retired', client);
    const { rows } = await client.query<KekRow>(
      `UPDATE rekey.keks SET restorable_until = retired_at + $3 * interval '1 millisecond'
       WHERE target = $1 AND kek_id = $2 RETURNING *`,
      [this.target, kekId, restoreWindowMs],
    );
    const until = rows[0]?.restorable_until;
    await this.record(
      client,
      kekId,
      'retired',
      `every row proved off it; restorable until ${until ? until.toISOString() : 'unknown'}`,
      STEP_ACTOR,
    );
    return rows[0] ? toRecord(rows[0]) : retired;
  }

  /**
   * A retired KEK's restore window, open again until at least `forMs` from now (the database's clock), inside the
   * caller's transaction, which holds the row's lock: a destruction that found rows that may still need the KEK
   * leaves room to restore it. Returns the window's end.
   */
  async reopen(kekId: string, forMs: number, client: PoolClient): Promise<Date> {
    const { rows } = await client.query<{ restorable_until: Date }>(
      `UPDATE rekey.keks SET restorable_until = GREATEST(restorable_until, now() + $3 * interval '1 millisecond')
       WHERE target = $1 AND kek_id = $2 AND state = 'retired' RETURNING restorable_until`,
      [this.target, kekId, forMs],
    );
    if (!rows[0]) throw new KekTransitionError(kekId, 'not retired', 'restorable', 'only a retired KEK has a window');
    return rows[0].restorable_until;
  }

  /** Locks a KEK's row until the caller's transaction ends: retire, restore and destroy each hold it. */
  async lock(kekId: string, client: PoolClient): Promise<void> {
    await client.query('SELECT 1 FROM rekey.keks WHERE target = $1 AND kek_id = $2 FOR UPDATE', [this.target, kekId]);
  }

  /** The database's clock (restore windows are measured by it, whatever the clocks of the processes say). */
  async now(client: Pool | PoolClient = this.db): Promise<Date> {
    const { rows } = await client.query<{ now: Date }>('SELECT now() AS now');
    return rows[0]!.now;
  }

  /**
   * A retired KEK back to decrypt-only, if its restore window has not ended, with who asked and why recorded in the
   * same transaction. Already decrypt-only (a repeated restore): nothing changes. Refused otherwise, saying why.
   */
  async restore(kekId: string, reason: string, actor: string, refuse: (why: string) => Error): Promise<KekRecord> {
    return inTransaction(this.db, async (client) => {
      await this.lock(kekId, client);
      const record = await this.require(kekId, client);
      if (record.state === 'decrypt_only') return record;
      if (record.state !== 'retired') throw refuse(`it is ${record.state}, not retired`);
      const now = await this.now(client);
      if (record.restorableUntil && record.restorableUntil <= now) {
        throw refuse(`its restore window ended at ${record.restorableUntil.toISOString()}; it is being destroyed`);
      }
      await this.transition(kekId, 'decrypt_only', client);
      const { rows } = await client.query<KekRow>(
        `UPDATE rekey.keks SET retired_at = NULL, restorable_until = NULL WHERE target = $1 AND kek_id = $2 RETURNING *`,
        [this.target, kekId],
      );
      await this.record(client, kekId, 'restored', reason, actor);
      return toRecord(rows[0]!);
    });
  }

  async record(
    client: Pool | PoolClient,
    kekId: string,
    event: KekEvent['event'],
    reason: string,
    actor: string,
  ): Promise<void> {
    await client.query(
      'INSERT INTO rekey.kek_events (target, kek_id, event, reason, actor) VALUES ($1, $2, $3, $4, $5)',
      [this.target, kekId, event, reason, actor],
    );
  }

  /** The KEK's audit trail, oldest first; `kinds` keeps only those events (e.g. the restores and destructions). */
  async events(kekId: string, kinds?: readonly KekEvent['event'][]): Promise<KekEvent[]> {
    const { rows } = await this.db.query<{
      kek_id: string;
      event: KekEvent['event'];
      reason: string;
      actor: string;
      at: Date;
    }>('SELECT kek_id, event, reason, actor, at FROM rekey.kek_events WHERE target = $1 AND kek_id = $2 ORDER BY id', [
      this.target,
      kekId,
    ]);
    return rows
      .filter((r) => kinds === undefined || kinds.includes(r.event))
      .map((r) => ({ kekId: r.kek_id, event: r.event, reason: r.reason, actor: r.actor, at: r.at }));
  }
}

/** A KEK as some registry in a database holds it: which target, under which id, in which state. */
export interface RegistryHolder {
  target: string;
  kekId: string;
  state: KekState;
}

/**
 * Every registry row of a database (every target's, whichever process registered it) holding a key with this
 * fingerprint in a state other than destroyed: before a KEK's material is destroyed, none but its own may be left.
 */
export async function registryHolders(db: Pool | PoolClient, fingerprint: string): Promise<RegistryHolder[]> {
  const { rows } = await db.query<{ target: string; kek_id: string; state: KekState }>(
    `SELECT target, kek_id, state FROM rekey.keks WHERE fingerprint = $1 AND state <> 'destroyed' ORDER BY target, kek_id`,
    [fingerprint],
  );
  return rows.map((r) => ({ target: r.target, kekId: r.kek_id, state: r.state }));
}
