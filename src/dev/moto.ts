import { spawn } from 'node:child_process';
import { freePort } from './ports';

/** A moto server process: AWS Secrets Manager and KMS on a loopback port, for tests and local trials. */
export interface MotoServer {
  /** e.g. http://127.0.0.1:41234: AWS_ENDPOINT_URL for the SDK. */
  endpoint: string;
  /** The server's process (benchmarks read its CPU time). */
  pid: number | undefined;
  /** What a process needs in its environment to talk to this server as AWS. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

/**
 * Starts moto's standalone server (installed by the setup's `moto` step) on a free loopback port and waits until it
 * answers; a server that exits while starting fails at once with its last output, one that never answers within
 * `timeoutMs` fails with that.
 */
export async function startMoto(motoServer: string, timeoutMs = 60_000): Promise<MotoServer> {
  const port = await freePort();
  const child = spawn(motoServer, ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  const endpoint = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`moto server exited while starting: ${stderr.trim().split('\n').pop() ?? 'no output'}`);
    }
    try {
      const response = await fetch(`${endpoint}/moto-api/data.json`, { signal: AbortSignal.timeout(1000) });
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`moto server did not answer on ${endpoint} within ${timeoutMs} ms: ${stderr.trim().slice(-300)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    endpoint,
    pid: child.pid,
    env: {
      AWS_ENDPOINT_URL: endpoint,
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'testing',
      AWS_SECRET_ACCESS_KEY: 'testing',
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
