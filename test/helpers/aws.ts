import { afterAll, beforeAll, inject } from 'vitest';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { startMoto, type MotoServer } from '../../src/dev/moto';
import { createTestDatabase, type TestDatabase } from './database';
import { useTimeSkippingEnv } from './temporal';

// The throttling proxy needs no test runner: the chaos suite (bench/chaos-targets.ts) uses it too.
export { throttlingProxy } from './throttling-proxy';

/** One moto server (AWS Secrets Manager and KMS) for the calling test file, stopped after its last test. */
export function useMoto(): { readonly server: MotoServer } {
  let server: MotoServer | undefined;
  beforeAll(async () => {
    server = await startMoto(inject('toolchain').motoServer);
  });
  afterAll(async () => {
    await server?.stop();
  });
  return {
    get server() {
      if (!server) throw new Error('moto is only available inside tests');
      return server;
    },
  };
}

/**
 * What a test file against AWS needs: a moto server, a time-skipping Temporal server and a test database, with an SDK
 * client to moto made by `client` (destroyed after the last test, the database dropped).
 */
export function useAwsServers<C extends { destroy(): void }>(
  client: (env: NodeJS.ProcessEnv) => C,
): {
  readonly moto: { readonly server: MotoServer };
  readonly temporal: { readonly env: TestWorkflowEnvironment };
  readonly db: TestDatabase;
  readonly client: C;
} {
  const moto = useMoto();
  const temporal = useTimeSkippingEnv();
  let db: TestDatabase | undefined;
  let made: C | undefined;
  beforeAll(async () => {
    db = await createTestDatabase();
    made = client(moto.server.env);
  });
  afterAll(async () => {
    made?.destroy();
    await db?.drop();
  });
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the AWS test servers are only available inside tests');
    return value;
  };
  return {
    moto,
    temporal,
    get db() {
      return ready(db);
    },
    get client() {
      return ready(made);
    },
  };
}

/**
 * Makes `client` lose the answer to the first call of `operation` (e.g. 'CreateKey') after AWS carried it out, as a
 * dropped connection does: the caller sees an error, the service has done the work. Returns how many were lost.
 */
export function loseFirstAnswer(
  client: { middlewareStack: { add: (...args: never[]) => void } },
  operation: string,
): { readonly lost: number } {
  let lost = 0;
  const add = client.middlewareStack.add as unknown as (
    middleware: (
      next: (args: unknown) => Promise<unknown>,
      context: { commandName?: string },
    ) => (args: unknown) => Promise<unknown>,
    options: { step: string; name: string },
  ) => void;
  add.call(
    client.middlewareStack,
    (next, context) => async (args) => {
      const result = await next(args);
      if (context.commandName === `${operation}Command` && lost === 0) {
        lost++;
        throw new Error(`socket hang up (the answer to ${operation} was lost; AWS carried it out)`);
      }
      return result;
    },
    { step: 'initialize', name: 'loseOneAnswer' },
  );
  return {
    get lost() {
      return lost;
    },
  };
}
