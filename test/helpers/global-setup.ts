import { bundleWorkflowCode } from '@temporalio/worker';
import type { TestProject } from 'vitest/node';
import { setup, type Toolchain } from '../../scripts/setup.mjs';
import { workflowsPath } from '../../src/worker';

declare module 'vitest' {
  export interface ProvidedContext {
    toolchain: Toolchain;
    workflowCode: string;
  }
}

/** Brings the servers up (idempotent, so `npx vitest` alone works too) and bundles the workflows once. */
export default async function globalSetup(project: TestProject): Promise<void> {
  const toolchain = await setup([
    'temporal-cli',
    'test-server',
    'postgres',
    'moto',
    'awscli',
    'vault',
    'tctl',
    'chromium',
    'promtool',
    'aes-gcm',
  ]);
  const { code } = await bundleWorkflowCode({ workflowsPath, logger: quietLogger });
  project.provide('toolchain', toolchain);
  project.provide('workflowCode', code);
}

const quietLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (message: string) => console.warn(message),
  error: (message: string) => console.error(message),
};
