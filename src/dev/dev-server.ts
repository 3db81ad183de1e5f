import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { Connection } from '@temporalio/client';
import { REKEY_SEARCH_ATTRIBUTES } from '../workflows/search-attributes';

const REKEY_KEYWORDS = Object.fromEntries(REKEY_SEARCH_ATTRIBUTES.map((key) => [key.name, 'Keyword' as const]));

export interface DevServerOptions {
  temporalCli: string;
  port: number;
  uiPort?: number;
  /** On-disk SQLite database: history survives a restart of the server. */
  dbFilename?: string;
  /** Registered at start; rekey's own (RekeyPhase, RekeyFromKek, RekeyToKek) unless given. */
  searchAttributes?: Record<string, 'Keyword' | 'Text' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList'>;
}

export interface DevServer {
  address: string;
  uiUrl?: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** The dev server ended while starting; the message carries its reason (a Go panic's first line), not a stack frame. */
export class DevServerExitedError extends Error {
  constructor(stderr: string) {
    const lines = stderr
      .trim()
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '');
    const reason =
      lines.find((line) => /^(panic|fatal|error)\b|bind: address already in use/i.test(line)) ??
      lines.find((line) => !line.startsWith('goroutine') && !/\.go:\d+/.test(line)) ??
      lines.pop();
    super(`temporal dev server exited: ${reason ?? 'no output'}`);
    this.name = 'DevServerExitedError';
  }
}

/** Starts `temporal server start-dev` (Web UI included unless uiPort is omitted) and waits until it answers. */
export async function startDevServer(options: DevServerOptions): Promise<DevServer> {
  const { temporalCli, port, uiPort, dbFilename } = options;
  const searchAttributes = options.searchAttributes ?? REKEY_KEYWORDS;
  for (const p of [port, uiPort].filter((p): p is number => p !== undefined)) {
    if (!(await portIsFree(p))) throw new Error(`port ${p} is taken: stop what uses it or choose another port`);
  }
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--log-level', 'error'];
  args.push(...(uiPort === undefined ? ['--headless'] : ['--ui-port', String(uiPort)]));
  if (dbFilename) args.push('--db-filename', dbFilename);
  for (const [name, type] of Object.entries(searchAttributes)) args.push('--search-attribute', `${name}=${type}`);

  const child = spawn(temporalCli, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  const address = `127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new DevServerExitedError(stderr);
    try {
      const connection = await Connection.connect({ address, connectTimeout: 1000 });
      await connection.workflowService.describeNamespace({ namespace: 'default' });
      await connection.close();
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`temporal dev server did not answer on ${address}: ${String(err)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  return {
    address,
    uiUrl: uiPort === undefined ? undefined : `http://127.0.0.1:${uiPort}`,
    process: child,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
