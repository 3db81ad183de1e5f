// What a rotation's launcher (workflows/scheduled-rotation.ts) asks before it starts a rotation: the keyspace of the
// schedule's target on this worker, and whether a build before keyspaces left a rotation of the target running under
// its old id.
import { WorkflowNotFoundError } from '@temporalio/client';
import { legacyRotationWorkflowId } from '../rotation/identity';
import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { ConfigError } from '../errors';

export function createKeyspaceActivities(deps: ActivityDependencies) {
  const targets = targetRuntimes(deps);
  return {
    /**
     * The keyspace a scheduled rotation of `target` runs in: the one its schedule recorded when it was created
     * (refused, naming both, if this worker's target is another), or, for a schedule created before keyspaces, the
     * one the target is on this worker. `legacyRunning`: the op id of a rotation an older build started under the
     * target's old id and that still runs.
     */
    async keyspaceToLaunch({
      target,
      keyspace,
    }: {
      target: string;
      keyspace?: string;
    }): Promise<{ keyspace: string; legacyRunning?: string }> {
      const runtime = await targets.forRequest({ target, keyspace });
      if (!deps.temporal) throw new ConfigError('this worker has no Temporal client to launch scheduled rotations');
      const legacyId = legacyRotationWorkflowId(target);
      const described = await deps.temporal.workflow
        .getHandle(legacyId)
        .describe()
        .catch((err: unknown) => {
          if (err instanceof WorkflowNotFoundError) return undefined;
          throw err;
        });
      const running = described?.type === 'rotateKek' && described.status.name === 'RUNNING';
      return { keyspace: runtime.keyspace.id, ...(running && { legacyRunning: `${legacyId}@${described.runId}` }) };
    },
  };
}
