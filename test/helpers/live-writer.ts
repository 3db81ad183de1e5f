import type { TenantCrypto } from '../../src/tenant-crypto';

/**
 * An application at work beside a rotation: it rewrites tenants' DEKs one after another (the n-th write names its
 * tenant with `tenantId(n)`) and, every `createEvery` writes, encrypts a record for a new tenant, whose ciphertext is
 * kept in `written` to be read back afterwards. `stop` ends it after the write under way and rethrows its failure.
 */
export function startLiveWriter(
  app: TenantCrypto,
  tenantId: (n: number) => string,
  options: { createEvery?: number; pauseMs?: number } = {},
): { readonly writes: number; readonly written: Map<string, string>; stop(): Promise<void> } {
  const { createEvery = 10, pauseMs = 0 } = options;
  const written = new Map<string, string>();
  let writing = true;
  let writes = 0;
  const running = (async () => {
    while (writing) {
      await app.rewriteDek(tenantId(writes));
      if (createEvery > 0 && writes % createEvery === 0) {
        const tenant = `new-tenant-${writes}`;
        written.set(tenant, await app.encrypt(tenant, 'fresh'));
      }
      writes++;
      if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  })();
  return {
    get writes() {
      return writes;
    },
    written,
    stop() {
      writing = false;
      return running;
    },
  };
}
