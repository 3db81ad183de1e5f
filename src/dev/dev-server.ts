import { spawn, type ChildProcess } from 'node:child_process';
import { Connection } from '@temporalio/client';
import { REKEY_SEARCH_ATTRIBUTES } from '../workflows/search-attributes';
import { addressInUse, listeningPorts, portToTry } from './ports';

const REKEY_KEYWORDS = Object.fromEntries(REKEY_SEARCH_ATTRIBUTES.map((key) => [key.name, 'Keyword' as const]));

export interface DevServerOptions {
  temporalCli: string;
  /** The frontend's gRPC port; omitted or 0: any free port (see startDevServer). */
  port?: number;
  /** The Web UI's port, 0 for any free port; omitted: no Web UI (headless). */
  uiPort?: number;
  /** On-disk SQLite database: history survives a restart of the server. */
  dbFilename?: string;
  /** Registered at start; rekey's own (RekeyPhase, RekeyFromKek, RekeyToKek) unless given. */
  searchAttributes?: Record<string, 'Keyword' | 'Text' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList'>;
  /** How long one start may take before it fails (the server's own start, not counting starts again). */
  timeoutMs?: number;
  /** Where the ports left to us come from (portToTry; a test gives its own sequence). */
  pickPort?: () => number;
}

export interface DevServer {
  address: string;
  port: number;
  uiUrl?: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** The dev server ended while starting; the message carries its reason (a Go panic's first line), not a stack frame. */
export class DevServerExitedError extends Error {
  readonly addressInUse: boolean;
  constructor(output: string) {
    const lines = output
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
    this.addressInUse = addressInUse(output);
  }
}

/** How many times a start on ports of our choosing is tried before the last collision is reported. */
const ATTEMPTS = 8;

/**
 * Starts `temporal server start-dev` and resolves once it serves. The CLI cannot listen on port 0 (it refuses a
 * frontend port 0 and needs the Web UI's port before it starts), and it picks its other ports (HTTP API, metrics,
 * internal services) itself. So where the caller leaves a port to us it is one outside the ephemeral range
 * (`portToTry`), and when the server exits saying an address was in use (one of ours, or one it picked), it is
 * started again on new ports, up to ATTEMPTS times. It is ready once it has printed its banner (the CLI prints it
 * after its frontend listens) and holds both our ports itself (read from /proc, so a port another program holds is
 * never taken for ours), and answers on its frontend. A port the caller names is used as given: taken, the start
 * fails with the server's reason.
 */
export async function startDevServer(options: DevServerOptions): Promise<DevServer> {
  const chooses = !options.port || options.uiPort === 0;
  const pick = options.pickPort ?? (() => portToTry());
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce({
        ...options,
        port: options.port || pick(),
        uiPort: options.uiPort === 0 ? pick() : options.uiPort,
      });
    } catch (err) {
      if (!(err instanceof DevServerExitedError) || !err.addressInUse || !chooses || attempt >= ATTEMPTS) throw err;
    }
  }
}

async function startOnce(options: DevServerOptions & { port: number }): Promise<DevServer> {
  const { temporalCli, port, uiPort, dbFilename } = options;
  const timeoutMs = options.timeoutMs ?? 90_000;
  const searchAttributes = options.searchAttributes ?? REKEY_KEYWORDS;
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--log-level', 'error'];
  args.push(...(uiPort === undefined ? ['--headless'] : ['--ui-port', String(uiPort)]));
  if (dbFilename) args.push('--db-filename', dbFilename);
  for (const [name, type] of Object.entries(searchAttributes)) args.push('--search-attribute', `${name}=${type}`);
  // As the Temporal SDK's own test environment starts it.
  for (const value of [
    'frontend.enableServerVersionCheck=false',
    'frontend.enableUpdateWorkflowExecution=true',
    'frontend.enableUpdateWorkflowExecutionAsyncAccepted=true',
  ]) {
    args.push('--dynamic-config-value', value);
  }

  const child = spawn(temporalCli, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout = (stdout + chunk.toString()).slice(-4000)));
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-8000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  };
  const address = `127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  const ours = [port, ...(uiPort === undefined ? [] : [uiPort])];
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new DevServerExitedError(stderr || stdout);
      if (/^Server:/m.test(stdout) && ours.every((p) => listeningPorts(child.pid!).includes(p))) break;
      if (Date.now() > deadline) {
        throw new Error(
          `temporal dev server did not start on ${address} within ${timeoutMs} ms: ${stderr.slice(-500)}`,
        );
      }
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 50))]);
    }
    // It holds the frontend's port; it serves once the default namespace answers.
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new DevServerExitedError(stderr || stdout);
      try {
        const connection = await Connection.connect({ address, connectTimeout: 2_000 });
        try {
          await connection.workflowService.describeNamespace({ namespace: 'default' });
        } finally {
          await connection.close();
        }
        break;
      } catch (err) {
        if (Date.now() > deadline) {
          throw new Error(`temporal dev server did not answer on ${address} within ${timeoutMs} ms: ${String(err)}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    address,
    port,
    uiUrl: uiPort === undefined ? undefined : `http://127.0.0.1:${uiPort}`,
    process: child,
    stop,
  };
}
