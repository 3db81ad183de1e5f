import type { Pool } from 'pg';

export interface ActivityDependencies {
  db: Pool;
}

export function createActivities({ db }: ActivityDependencies) {
  return {
    async describeDatabase(): Promise<string> {
      const { rows } = await db.query<{ version: string }>('SELECT current_setting($1) AS version', ['server_version']);
      return `PostgreSQL ${rows[0]?.version ?? 'unknown'}`;
    },
  };
}

export type Activities = ReturnType<typeof createActivities>;
