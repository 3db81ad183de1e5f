import { createKekActivities } from './kek';
import { createRewrapActivities } from './rewrap';
import type { ActivityDependencies } from './dependencies';

export type { ActivityDependencies } from './dependencies';

/** Every activity, over injected dependencies: the worker passes its pool and key provider, tests theirs. */
export function createActivities(deps: ActivityDependencies) {
  return { ...createKekActivities(deps), ...createRewrapActivities(deps) };
}

export type Activities = ReturnType<typeof createActivities>;
