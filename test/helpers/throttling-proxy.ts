// An HTTP proxy in front of moto for the KMS tests and the chaos suite: it imports no test runner, so bench/ can use it.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * An HTTP proxy in front of moto that answers some requests as AWS does when it throttles (HTTP 400,
 * ThrottlingException) instead of forwarding them: `throttleEvery` = 2 throttles every second request (0: none; the
 * setter `throttleEvery` changes it while the proxy runs, e.g. to throttle for a while mid-run). Counts what
 * it throttled and what it forwarded, by the operation the SDK named (X-Amz-Target), or else by method and path. `outage(ms)` makes the endpoint
 * unreachable for `ms` (every connection is reset, as a server that went away does) and, with `untilRefused`, until it
 * has turned away a request (at most a minute), then serves again.
 */
export async function throttlingProxy(
  upstream: string,
  throttleEvery: number,
): Promise<{
  endpoint: string;
  throttled: number;
  throttleEvery: number;
  /** Requests whose connection was reset during an outage. */
  refused: number;
  /** Requests forwarded whose answer has not yet been sent back, now and at most. */
  inFlight: number;
  mostInFlight: number;
  forwarded: Map<string, number>;
  outage(ms: number, untilRefused?: boolean): Promise<void>;
  close(): Promise<void>;
}> {
  let seen = 0;
  let down = false;
  let every = throttleEvery;
  const state = { throttled: 0, refused: 0, inFlight: 0, mostInFlight: 0, forwarded: new Map<string, number>() };
  const server = http.createServer((request, response) => {
    if (down) {
      state.refused++;
      request.socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      seen++;
      if (every > 0 && seen % every === 0) {
        state.throttled++;
        response.writeHead(400, {
          'content-type': 'application/x-amz-json-1.1',
          'x-amzn-errortype': 'ThrottlingException',
        });
        response.end(JSON.stringify({ __type: 'ThrottlingException', message: 'Rate exceeded' }));
        return;
      }
      // AWS names its operation (X-Amz-Target); another HTTP API (Vault) is named by method and path.
      const amzTarget = request.headers['x-amz-target'];
      const operation = amzTarget
        ? String(amzTarget).split('.').pop()!
        : `${request.method} ${(request.url ?? '/').split('?')[0]!.replace(/^\/v1\//, '')}`;
      state.forwarded.set(operation, (state.forwarded.get(operation) ?? 0) + 1);
      state.inFlight++;
      state.mostInFlight = Math.max(state.mostInFlight, state.inFlight);
      let answered = false;
      const done = () => {
        if (answered) return;
        answered = true;
        state.inFlight--;
      };
      response.on('close', done);
      const target = new URL(request.url ?? '/', upstream);
      const forward = http.request(
        target,
        { method: request.method, headers: { ...request.headers, host: target.host } },
        (answer) => {
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
        },
      );
      forward.on('error', (err) => {
        response.writeHead(502);
        response.end(String(err));
      });
      forward.end(Buffer.concat(chunks));
    });
  });
  server.on('connection', (socket) => {
    if (down) {
      state.refused++;
      socket.destroy();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    get throttled() {
      return state.throttled;
    },
    get throttleEvery() {
      return every;
    },
    set throttleEvery(n: number) {
      every = n;
    },
    get refused() {
      return state.refused;
    },
    get inFlight() {
      return state.inFlight;
    },
    get mostInFlight() {
      return state.mostInFlight;
    },
    forwarded: state.forwarded,
    async outage(ms: number, untilRefused = false) {
      const before = state.refused;
      const until = Date.now() + 60_000;
      down = true;
      server.closeIdleConnections();
      await new Promise((resolve) => setTimeout(resolve, ms));
      while (untilRefused && state.refused === before && Date.now() < until)
        await new Promise((resolve) => setTimeout(resolve, 50));
      down = false;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
