import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, inject } from 'vitest';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';
import { projectRoot } from '../../src/project-paths';
import { createTestDatabase, type TestDatabase } from './database';
import { useTimeSkippingEnv } from './temporal';

/**
 * What a test file against Vault needs: a dev Vault server (KV v2 at secret/, Transit at transit/), a time-skipping
 * Temporal server and a test database, each stopped or dropped after the file's last test.
 */
export function useVaultServers(): {
  readonly vault: VaultServer;
  readonly temporal: { readonly env: TestWorkflowEnvironment };
  readonly db: TestDatabase;
} {
  const temporal = useTimeSkippingEnv();
  let vault: VaultServer | undefined;
  let db: TestDatabase | undefined;
  beforeAll(async () => {
    [vault, db] = await Promise.all([startVault(inject('toolchain').vault), createTestDatabase()]);
  });
  afterAll(async () => {
    await Promise.all([vault?.stop(), db?.drop()]);
  });
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the Vault test servers are only available inside tests');
    return value;
  };
  return {
    temporal,
    get vault() {
      return ready(vault);
    },
    get db() {
      return ready(db);
    },
  };
}

/** The README's HCL block that follows the line `<!-- policy: <name> -->`, exactly as documented. */
export function readmePolicy(name: string): string {
  return readmeBlock(`<!-- policy: ${name} -->`, 'hcl');
}

/** The README's code block in `language` that follows the line `marker`, exactly as documented. */
export function readmeBlock(marker: string, language: string): string {
  const readme = fs.readFileSync(path.join(projectRoot, 'README.md'), 'utf8');
  const at = readme.indexOf(marker);
  if (at < 0) throw new Error(`README.md has no ${marker}`);
  const block = new RegExp('```' + language + '\\n([\\s\\S]*?)```').exec(readme.slice(at));
  if (!block) throw new Error(`README.md has no ${language} block after ${marker}`);
  return block[1]!;
}

/** A token (with Vault's default policy, as any token made with policies has) whose policy is `hcl`. */
export async function tokenWithPolicy(vault: VaultServer, name: string, hcl: string): Promise<string> {
  await vaultRequest(vault, 'POST', `sys/policies/acl/${name}`, { policy: hcl });
  const created = await vaultRequest<{ auth: { client_token: string } }>(vault, 'POST', 'auth/token/create', {
    policies: [name],
    ttl: '1h',
  });
  return created.auth.client_token;
}

/**
 * An HTTP proxy in front of Vault that forwards every request and, for each request `loses` picks, drops the answer
 * after Vault carried the request out (the connection is destroyed, as a network failure does). Records the requests
 * it forwarded as `METHOD path` (without the query), and counts the answers it lost.
 */
export async function lossyVaultProxy(
  upstream: string,
  loses: (method: string, apiPath: string, body: string) => boolean,
): Promise<{ address: string; readonly lost: number; forwarded: string[]; close(): Promise<void> }> {
  const state = { lost: 0, forwarded: [] as string[] };
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks);
      const apiPath = (request.url ?? '/').split('?')[0]!.replace(/^\/v1\//, '');
      const method = request.method ?? 'GET';
      state.forwarded.push(`${method} ${apiPath}`);
      const drop = loses(method, apiPath, body.toString());
      const target = new URL(request.url ?? '/', upstream);
      const forward = http.request(target, { method, headers: { ...request.headers, host: target.host } }, (answer) => {
        const answered: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => answered.push(chunk));
        answer.on('end', () => {
          if (drop) {
            state.lost++;
            response.socket?.destroy();
            return;
          }
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          response.end(Buffer.concat(answered));
        });
      });
      forward.on('error', (err) => {
        response.writeHead(502);
        response.end(String(err));
      });
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    address: `http://127.0.0.1:${port}`,
    get lost() {
      return state.lost;
    },
    forwarded: state.forwarded,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
