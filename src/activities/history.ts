import type { Pool } from 'pg';
import { RunHistory, type RunRecord } from '../store/run-history';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { KeyMaterialError, TargetConfigError } from '../errors';

export function createHistoryActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);
  return {
    /**
     * Records a run's end in rekey.run_history of its keyspace's database (the last step of every rotation and
     * migration). A keyspace whose database cannot be named (an unknown target, a URL variable that is not set) has
     * nowhere to keep it: that is answered, not retried, and the run's outcome stands.
     */
    async recordRun(run: RunRecord): Promise<{ recorded: boolean; why?: string }> {
      let db: Pool;
      try {
        db = await targets.databaseOf(run.target);
      } catch (err) {
        if (err instanceof TargetConfigError || err instanceof KeyMaterialError) {
          return { recorded: false, why: err.message };
        }
        throw err;
      }
      await new RunHistory(db).record(run);
      return { recorded: true };
    },
  };
}
