// What `rekey schedule create` runs before it creates a schedule: a worker of the task queue checks that the target's
// runs can ever do their work (its key source generates KEKs), so that a schedule that cannot is refused at once
// instead of failing at its first run, a quarter later. Its one activity answers, or fails with the reason.
import type { RotationRequest } from '../rotation/rotation-input';
import { steps } from './activity-proxies';

export async function checkRotationSchedule(request: RotationRequest): Promise<{ keySource: string }> {
  return steps.checkScheduledRotation(request);
}
