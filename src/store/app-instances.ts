import type { Pool } from 'pg';

export interface AppInstance {
  instanceId: string;
  unwrapKekIds: string[];
  wrapKekId: string | null;
  lastSeen: Date;
}

/** Application processes announce what they can unwrap and what they wrap with; rotation reads the live fleet. */
export class AppInstances {
  constructor(private readonly db: Pool) {}

  async announce(instance: Omit<AppInstance, 'lastSeen'>): Promise<void> {
    await this.db.query(
      `INSERT INTO app_instances (instance_id, unwrap_kek_ids, wrap_kek_id) VALUES ($1, $2, $3)
       ON CONFLICT (instance_id) DO UPDATE
         SET unwrap_kek_ids = EXCLUDED.unwrap_kek_ids, wrap_kek_id = EXCLUDED.wrap_kek_id, last_seen = now()`,
      [instance.instanceId, instance.unwrapKekIds, instance.wrapKekId],
    );
  }

  async withdraw(instanceId: string): Promise<void> {
    await this.db.query('DELETE FROM app_instances WHERE instance_id = $1', [instanceId]);
  }

  /** Instances seen within `liveWithinMs` (by the database clock). */
  async live(liveWithinMs: number): Promise<AppInstance[]> {
    const { rows } = await this.db.query<{
      instance_id: string;
      unwrap_kek_ids: string[];
      wrap_kek_id: string | null;
      last_seen: Date;
    }>(
      `SELECT instance_id, unwrap_kek_ids, wrap_kek_id, last_seen FROM app_instances
       WHERE last_seen > now() - make_interval(secs => $1) ORDER BY instance_id`,
      [liveWithinMs / 1000],
    );
    return rows.map((r) => ({
      instanceId: r.instance_id,
      unwrapKekIds: r.unwrap_kek_ids,
      wrapKekId: r.wrap_kek_id,
      lastSeen: r.last_seen,
    }));
  }
}
