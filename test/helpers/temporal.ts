import { TestWorkflowEnvironment } from '@temporalio/testing';
import { inject } from 'vitest';
import { ensureSearchAttributes } from '../../src/client/search-attributes';
import { REKEY_SEARCH_ATTRIBUTES } from '../../src/workflows/search-attributes';

/** The Java time-skipping test server built by the setup (no download), with rekey's search attributes. */
export async function createTimeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  const env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: inject('toolchain').testServer } },
  });
  await ensureSearchAttributes(env.connection, env.namespace ?? 'default');
  return env;
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
      searchAttributes: REKEY_SEARCH_ATTRIBUTES,
      log: { format: 'json', level: 'error' },
    },
  });
}

export function workflowBundle(): { code: string } {
  return { code: inject('workflowCode') };
}
