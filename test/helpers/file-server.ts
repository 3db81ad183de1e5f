import { afterAll, beforeAll } from 'vitest';

/**
 * One server for the calling test file: `start` makes it before the file's first test, and it is stopped after its
 * last. Read outside the tests, it throws, naming `what`.
 */
export function useFileServer<S extends { stop(): Promise<void> }>(
  start: () => Promise<S>,
  what: string,
): { readonly server: S } {
  let server: S | undefined;
  beforeAll(async () => {
    server = await start();
  });
  afterAll(async () => {
    await server?.stop();
  });
  return {
    get server() {
      if (!server) throw new Error(`${what} is only available inside tests`);
      return server;
    },
  };
}
