import { proxyActivities, sleep } from '@temporalio/workflow';
import type { Activities } from '../activities';

export interface RotateKekInput {
  from: string;
  to: string;
  /** How long to wait before the old KEK may be retired, e.g. '7 days'. */
  gracePeriod?: string;
}

export interface RotateKekResult {
  from: string;
  to: string;
  gracedFor: string;
  checkedAt: string;
}

const { describeDatabase } = proxyActivities<Activities>({ startToCloseTimeout: '30 seconds' });

/** Placeholder: proves the plumbing (activities, durable timer). The rotation steps replace it. */
export async function rotateKek(input: RotateKekInput): Promise<RotateKekResult> {
  const gracedFor = input.gracePeriod ?? '7 days';
  await sleep(gracedFor);
  const checkedAt = await describeDatabase();
  return { from: input.from, to: input.to, gracedFor, checkedAt };
}
