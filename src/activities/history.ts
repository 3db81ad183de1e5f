import type { Pool } from 'pg';
import { RunHistory, type RunRecord } from '../store/run-history';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { KeyMaterialError, KeyspaceMismatchError, TargetConfigError } from '../errors';

export function createHistoryActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);
  return {
    /**
     * Records a run's end in rekey.run_history of its keyspace's database (the last step of every rotation and
     * migration). A keyspace whose database cannot be named (an unknown target, a URL variable that is not set) has
     * nowhere to keep it: that is answered, not retried, and the run's outcome stands. A run that names its keyspace is
     * recorded only in that keyspace's database: a worker whose target is another keyspace answers so and writes nothing.
     */
    async recordRun({
      keyspace,
      ...run
    }: RunRecord & { keyspace?: string }): Promise<{ recorded: boolean; why?: string }> {
      let db: Pool;
      try {
        db = await targets.databaseOf(run.target);
        if (keyspace !== undefined) {
          const here = await targets.keyspace(run.target);
          if (here.id !== keyspace) {
            throw new KeyspaceMismatchError(
              `run ${run.workflowId} belongs to keyspace ${keyspace}, but target '${run.target}' is keyspace ${here.id} on this worker (database ${here.databaseId}): not recorded here`,
            );
          }
        }
      } catch (err) {
        if (
          err instanceof TargetConfigError ||
          err instanceof KeyMaterialError ||
          err instanceof KeyspaceMismatchError
        ) {
          return { recorded: false, why: err.message };
        }
        throw err;
      }
      await new RunHistory(db).record(run);
      return { recorded: true };
    },
  };
}
