import { TestWorkflowEnvironment } from '@temporalio/testing';
import { inject } from 'vitest';

/** The Java time-skipping test server built by the setup (no download). */
export function createTimeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: inject('toolchain').testServer } },
  });
}

/** The go-built `temporal server start-dev` (in-memory unless dbFilename is given). */
export function createDevServerEnv(
  options: { ui?: boolean; uiPort?: number; dbFilename?: string } = {},
): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createLocal({
    server: {
      executable: { type: 'existing-path', path: inject('toolchain').temporalCli },
      ip: '127.0.0.1',
      ...options,
      log: { format: 'json', level: 'error' },
    },
  });
}

export function workflowBundle(): { code: string } {
  return { code: inject('workflowCode') };
}
