import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Pool } from 'pg';
import { inject } from 'vitest';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';
import { VaultKvKeys } from '../../src/keyring/drivers/vault-kv';
import { projectRoot } from '../../src/project-paths';
import { KekRegistry } from '../../src/store/kek-registry';
import { useTestDatabases, type TestDatabase } from './database';
import { useFileServer } from './file-server';
import { useTimeSkippingEnv } from './temporal';
import { fingerprintIn } from './store-keys';
import { generateKek } from '../../src/keyring/keyring';

/** A dev Vault server (KV v2 at secret/, Transit at transit/) for the calling test file, stopped after its last test. */
export function useVault(): { readonly server: VaultServer } {
  return useFileServer(() => startVault(inject('toolchain').vault), 'the Vault test server');
}

/**
 * A dev Vault server (KV v2 at secret/, Transit at transit/) and `count` test databases (two deployments sharing one
 * Vault, for the tests of its owner records), stopped and dropped after the file's last test.
 */
export function useVaultAndDatabases(count: number): {
  readonly vault: VaultServer;
  db(index: number): TestDatabase;
} {
  const vault = useVault();
  const databases = useTestDatabases(count);
  return {
    get vault() {
      return vault.server;
    },
    db: (index: number) => databases.db(index),
  };
}

/** A dev Vault server (KV v2 at secret/, Transit at transit/) and a test database, stopped and dropped after the file's last test. */
export function useVaultAndDatabase(): { readonly vault: VaultServer; readonly db: TestDatabase } {
  const servers = useVaultAndDatabases(1);
  return {
    get vault() {
      return servers.vault;
    },
    get db() {
      return servers.db(0);
    },
  };
}

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
  const servers = useVaultAndDatabase();
  return {
    temporal,
    get vault() {
      return servers.vault;
    },
    get db() {
      return servers.db;
    },
  };
}

/** The guide's HCL block that follows the line `<!-- policy: <name> -->`, exactly as documented (docs/06). */
export function readmePolicy(name: string): string {
  return readmeBlock(`<!-- policy: ${name} -->`, 'hcl');
}

/**
 * The code block in `language` that follows the line `marker`, exactly as documented, in the one page of the guide
 * (README.md or docs/*.md) that holds the marker.
 */
export function readmeBlock(marker: string, language: string): string {
  const pages = ['README.md', ...fs.readdirSync(path.join(projectRoot, 'docs')).map((page) => `docs/${page}`)];
  const holding = pages.filter((page) => page.endsWith('.md') && readPage(page).includes(marker));
  if (holding.length !== 1)
    throw new Error(`${holding.length} pages of the guide have ${marker}: ${holding.join(', ')}`);
  const text = readPage(holding[0]!);
  const block = new RegExp('```' + language + '\\n([\\s\\S]*?)```').exec(text.slice(text.indexOf(marker)));
  if (!block) throw new Error(`${holding[0]} has no ${language} block after ${marker}`);
  return block[1]!;
}

function readPage(page: string): string {
  return fs.readFileSync(path.join(projectRoot, page), 'utf8');
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

/**
 * Another keyspace's Vault KV secret, at a path of its own: `storeB` made v1 there with `owner` as the secret's owner,
 * and keyspace B's registry (in `dbB`) has v1 active. `env` names the path (with `extra`), as a misconfigured keyspace
 * A would; `metadata` reads the secret's metadata as Vault keeps it (current version, custom metadata).
 */
export async function vaultSecretOwnedBy(
  vault: VaultServer,
  dbB: Pool,
  owner: string,
  extra: Record<string, string> = {},
): Promise<{
  path: string;
  env: Record<string, string>;
  storeB: VaultKvKeys;
  metadata: () => Promise<{ current_version: number; custom_metadata: Record<string, string> }>;
}> {
  const path = `encryption/${randomUUID()}`;
  const env = { ...vault.env, ...extra, REKEY_VAULT_KV_PATH: path };
  const storeB = VaultKvKeys.fromEnv(env);
  await generateKek(storeB, 'v1', { owner });
  await new KekRegistry(dbB, 'rekey').seedActive('v1', await fingerprintIn(storeB, 'v1'));
  const metadata = async () =>
    (
      await vaultRequest<{ data: { current_version: number; custom_metadata: Record<string, string> } }>(
        vault,
        'GET',
        `secret/metadata/${path}`,
      )
    ).data;
  return { path, env, storeB, metadata };
}
