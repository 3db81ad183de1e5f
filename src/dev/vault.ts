import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { vaultExchange } from '../keyring/vault-http';
import { portToTry } from './ports';

/** A HashiCorp Vault dev server (in memory, unsealed, KV v2 at `secret/`, Transit at `transit/`), for tests and trials. */
export interface VaultServer {
  /** e.g. http://127.0.0.1:41234: VAULT_ADDR. */
  address: string;
  /** The root token, random for each server. */
  rootToken: string;
  /** The server's process (its CPU, read by the benchmark). */
  pid: number | undefined;
  /** What a process needs in its environment to talk to this server: VAULT_ADDR and VAULT_TOKEN (and VAULT_CACERT). */
  env: Record<string, string>;
  /** With `tls`: the PEM file of the CA that signed the server's certificate (Vault's `-dev-tls` writes it). */
  caCert?: string;
  /** Stops the server's process group and waits until it has exited. */
  stop(): Promise<void>;
}

export interface VaultOptions {
  /** How long the server may take to start and answer, in ms. */
  timeoutMs?: number;
  /** Where the candidate ports come from (a test gives a taken one first); by default, one the OS has free. */
  nextPort?: () => number | Promise<number>;
  /** Serve HTTPS (`-dev-tls`): a certificate for 127.0.0.1 and localhost signed by a CA of its own, in its folder. */
  tls?: boolean;
}

/** Vault's message when its listener's address is taken: `listen tcp 127.0.0.1:N: bind: address already in use`. */
const ADDRESS_IN_USE = /address already in use/i;
/** How many taken ports in a row are put up with before giving up. */
const PORT_ATTEMPTS = 5;

/**
 * Starts `vault server -dev` (built by the setup's `vault` step) on a loopback port with a random root token, waits
 * until it is unsealed and answers that token, and enables Transit.
 *
 * Vault takes its dev listener's address from `-dev-listen-address`, and given port 0 it listens on a port it never
 * reports (its API address stays `http://127.0.0.1:0`). So the port is one the OS had free a moment before, and if
 * another process has taken it since, Vault exits saying the address is in use and the server is started again on
 * another. The server counts as listening only once its own output says it started, so a Vault of another test that
 * holds the port is never mistaken for it. Clustering is disabled (`disable_clustering`), or the dev server would
 * also listen on the port after its own, which another process may have been given. A server that exits for any
 * other reason fails at once with its last output; one that does not answer within `timeoutMs` is killed and fails
 * with that.
 */
export async function startVault(vaultBinary: string, options: VaultOptions = {}): Promise<VaultServer> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const nextPort = options.nextPort ?? (() => portToTry());
  const rootToken = `rekey-dev-${randomBytes(16).toString('hex')}`;
  const deadline = Date.now() + timeoutMs;
  const configDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-vault-'));
  const removeConfig = () => fs.rmSync(configDir, { recursive: true, force: true });
  const config = path.join(configDir, 'dev.json');
  fs.writeFileSync(config, JSON.stringify({ disable_clustering: true }));
  try {
    for (let attempt = 1; ; attempt++) {
      const port = await nextPort();
      const tlsArgs = options.tls ? ['-dev-tls', `-dev-tls-cert-dir=${configDir}`] : [];
      const started = await launch(vaultBinary, ['-config', config, ...tlsArgs], port, rootToken, deadline);
      if (started.kind === 'listening') {
        const caCert = options.tls ? path.join(configDir, 'vault-ca.pem') : undefined;
        const address = `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
        const server = serverOf(started.child, address, rootToken, removeConfig, caCert);
        try {
          await untilReady(server, started.child, started.output, deadline);
          await vaultRequest(server, 'POST', 'sys/mounts/transit', { type: 'transit' });
          return server;
        } catch (error) {
          await server.stop();
          throw error;
        }
      }
      if (started.kind === 'address-in-use' && attempt < PORT_ATTEMPTS) continue;
      throw new Error(`vault server did not start on 127.0.0.1:${port}: ${started.reason}`);
    }
  } catch (error) {
    removeConfig();
    throw error;
  }
}

/** A request to the server's HTTP API as its root token; the parsed answer, or an error naming the status. */
export async function vaultRequest<T = unknown>(
  server: Pick<VaultServer, 'address' | 'rootToken' | 'caCert'>,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  apiPath: string,
  body?: unknown,
): Promise<T> {
  const { status, text } = await exchange(server, method, apiPath, body);
  if (status < 200 || status > 299)
    throw new Error(`vault ${method} /v1/${apiPath} answered ${status}: ${text.trim()}`);
  return (text ? JSON.parse(text) : undefined) as T;
}

/** One request to the server as its root token (over TLS trusting its own CA when it has one), 10 s at most. */
function exchange(
  server: Pick<VaultServer, 'address' | 'rootToken' | 'caCert'>,
  method: string,
  apiPath: string,
  body?: unknown,
): ReturnType<typeof vaultExchange> {
  return vaultExchange(`${server.address}/v1/${apiPath}`, {
    method,
    headers: {
      'X-Vault-Token': server.rootToken,
      ...(body !== undefined && { 'Content-Type': 'application/json' }),
    },
    ...(body !== undefined && { body: JSON.stringify(body) }),
    ...(server.caCert && { agent: new https.Agent({ ca: fs.readFileSync(server.caCert) }) }),
    timeoutMs: 10_000,
  });
}

type Launched =
  | { kind: 'listening'; child: ChildProcess; output: { text: string } }
  | { kind: 'address-in-use' | 'failed'; reason: string };

/** Spawns the server in a process group of its own and waits until its output says it started, or it exits. */
function launch(
  vaultBinary: string,
  extraArgs: string[],
  port: number,
  rootToken: string,
  deadline: number,
): Promise<Launched> {
  const env: NodeJS.ProcessEnv = {};
  // Nothing of the caller's Vault (VAULT_ADDR, VAULT_TOKEN, VAULT_API_ADDR, …) reaches the dev server.
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('VAULT_')) env[name] = value;
  const child = spawn(
    vaultBinary,
    [
      'server',
      '-dev',
      `-dev-root-token-id=${rootToken}`,
      `-dev-listen-address=127.0.0.1:${port}`,
      // The dev server would otherwise write its root token to ~/.vault-token, over the user's own.
      '-dev-no-store-token',
      ...extraArgs,
    ],
    { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env },
  );
  const output = { text: '' };
  const last = () => why(output.text);
  return new Promise((resolve) => {
    const timer = setTimeout(
      () => {
        killGroup(child, 'SIGKILL');
        settle({ kind: 'failed', reason: `it did not say it started in time: ${last()}` });
      },
      Math.max(0, deadline - Date.now()),
    );
    const settle = (result: Launched) => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('close', onExit);
      child.off('error', onError);
      if (result.kind === 'listening') {
        // Keep the pipes drained (Vault blocks on a full one) and the tail of the output for an error message.
        const keep = (chunk: Buffer) => (output.text = (output.text + chunk.toString()).slice(-8000));
        child.stdout?.on('data', keep);
        child.stderr?.on('data', keep);
      }
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      output.text = (output.text + chunk.toString()).slice(-8000);
      if (/Vault server started!/.test(output.text)) settle({ kind: 'listening', child, output });
    };
    const onExit = () =>
      settle({ kind: ADDRESS_IN_USE.test(output.text) ? 'address-in-use' : 'failed', reason: `it exited: ${last()}` });
    const onError = (error: Error) => settle({ kind: 'failed', reason: error.message });
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    // 'close', not 'exit': by then all of its output has been read, the reason it exited included.
    child.once('close', onExit);
    child.once('error', onError);
  });
}

/** Waits until the server reports itself initialized, unsealed and active, and accepts the root token. */
async function untilReady(
  server: VaultServer,
  child: ChildProcess,
  output: { text: string },
  deadline: number,
): Promise<void> {
  let lastProblem = 'no answer yet';
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`vault server exited while starting: ${why(output.text)}`);
    }
    try {
      // 200 only when initialized, unsealed and active (503 while sealed, 429 on a standby).
      const health = await exchange(server, 'GET', 'sys/health');
      if (health.status === 200) {
        await vaultRequest(server, 'GET', 'auth/token/lookup-self');
        return;
      }
      lastProblem = `sys/health answered ${health.status}`;
    } catch (error) {
      lastProblem = error instanceof Error ? error.message : String(error);
    }
    if (Date.now() > deadline) {
      throw new Error(`vault server on ${server.address} was not ready in time: ${lastProblem}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Vault says why it stopped in lines that start with "Error" (its log lines start with a time); else its last lines. */
function why(output: string): string {
  const lines = output.trim().split('\n');
  const errors = lines.filter((line) => line.startsWith('Error'));
  return (errors.length > 0 ? errors : lines.slice(-3)).join(' | ') || 'no output';
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group is gone already
  }
}

function serverOf(
  child: ChildProcess,
  address: string,
  rootToken: string,
  cleanUp: () => void,
  caCert?: string,
): VaultServer {
  return {
    address,
    rootToken,
    pid: child.pid,
    env: { VAULT_ADDR: address, VAULT_TOKEN: rootToken, ...(caCert && { VAULT_CACERT: caCert }) },
    ...(caCert && { caCert }),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        killGroup(child, 'SIGTERM');
        const late = setTimeout(() => killGroup(child, 'SIGKILL'), 10_000);
        await exited;
        clearTimeout(late);
      }
      cleanUp();
    },
  };
}
