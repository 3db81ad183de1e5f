import type { Pool } from 'pg';

export interface AppInstance {
  instanceId: string;
  unwrapKekIds: string[];
  wrapKekId: string | null;
  /** The fingerprint of each KEK the instance holds (empty for instances of versions that did not announce them). */
  kekFingerprints: Record<string, string>;
  /** An application process (wraps new DEKs) or a rekey worker (rewraps); absent: an application. */
  role?: 'application' | 'worker';
  lastSeen: Date;
}

/** Application processes announce what they can unwrap and what they wrap with; rotation reads the live fleet. */
export class AppInstances {
  constructor(
    private readonly db: Pool,
    readonly target: string,
  ) {}

  async announce(instance: Omit<AppInstance, 'lastSeen'>): Promise<void> {
    await this.db.query(
      `INSERT INTO rekey.app_instances (target, instance_id, unwrap_kek_ids, wrap_kek_id, kek_fingerprints, role)
       VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (target, instance_id) DO UPDATE
         SET unwrap_kek_ids = EXCLUDED.unwrap_kek_ids, wrap_kek_id = EXCLUDED.wrap_kek_id,
             kek_fingerprints = EXCLUDED.kek_fingerprints, role = EXCLUDED.role, last_seen = now()`,
      [
        this.target,
        instance.instanceId,
        instance.unwrapKekIds,
        instance.wrapKekId,
        instance.kekFingerprints,
        instance.role ?? 'application',
      ],
    );
  }

  async withdraw(instanceId: string): Promise<void> {
    await this.db.query('DELETE FROM rekey.app_instances WHERE target = $1 AND instance_id = $2', [
      this.target,
      instanceId,
    ]);
  }

  /** Instances seen within `liveWithinMs` (by the database clock). */
  async live(liveWithinMs: number): Promise<AppInstance[]> {
    const { rows } = await this.db.query<{
      instance_id: string;
      unwrap_kek_ids: string[];
      wrap_kek_id: string | null;
      kek_fingerprints: Record<string, string>;
      role: 'application' | 'worker';
      last_seen: Date;
    }>(
      `SELECT instance_id, unwrap_kek_ids, wrap_kek_id, kek_fingerprints, role, last_seen FROM rekey.app_instances
       WHERE target = $1 AND last_seen > now() - make_interval(secs => $2) ORDER BY instance_id`,
      [this.target, liveWithinMs / 1000],
    );
    return rows.map((r) => ({
      instanceId: r.instance_id,
      unwrapKekIds: r.unwrap_kek_ids,
      wrapKekId: r.wrap_kek_id,
      kekFingerprints: r.kek_fingerprints,
      role: r.role,
      lastSeen: r.last_seen,
    }));
  }
}
