import { targetRuntimes, type ActivityDependencies } from './dependencies';
import { createApplicationActivities } from './application';
import { createHistoryActivities } from './history';
import { createKekActivities } from './kek';
import { createKeyspaceActivities } from './keyspace';
import { createMigrationActivities } from './migrate';
import { createRewrapActivities } from './rewrap';
import { createScheduleActivities } from './schedules';

export type { ActivityDependencies } from './dependencies';

/** Every activity, over injected dependencies: the worker passes its pool, key provider and targets, tests theirs. */
export function createActivities(deps: ActivityDependencies) {
  // One set of target runtimes for all activities: each target is opened (and its table checked) once.
  const shared = { ...deps, targets: targetRuntimes(deps) };
  return {
    ...createKekActivities(shared),
    ...createRewrapActivities(shared),
    ...createApplicationActivities(shared),
    ...createMigrationActivities(shared),
    ...createScheduleActivities(shared),
    ...createKeyspaceActivities(shared),
    ...createHistoryActivities(shared),
  };
}

export type Activities = ReturnType<typeof createActivities>;
