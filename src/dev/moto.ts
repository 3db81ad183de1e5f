import { spawn } from 'node:child_process';

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
 * Starts moto's standalone server (installed by the setup's `moto` step) on port 0: it listens on a port the kernel
 * gives it and says which (werkzeug's ` * Running on http://127.0.0.1:<port>`, printed once it listens), so no port is
 * chosen beforehand for another process to take. A server that exits while starting fails at once with its last
 * output; one that says nothing within `timeoutMs` fails with that.
 */
export async function startMoto(motoServer: string, timeoutMs = 60_000): Promise<MotoServer> {
  const child = spawn(motoServer, ['-H', '127.0.0.1', '-p', '0'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  let stderr = '';
  const endpoint = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(`moto server did not say where it listens within ${timeoutMs} ms: ${stderr.trim().slice(-300)}`),
      );
    }, timeoutMs);
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
      const listening = /Running on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
      if (listening) {
        clearTimeout(timer);
        resolve(listening[1]!);
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      reject(new Error(`moto server exited while starting: ${stderr.trim().split('\n').pop() ?? 'no output'}`));
    });
  });
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
