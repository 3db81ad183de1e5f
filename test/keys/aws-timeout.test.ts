// An AWS endpoint that takes a connection and never answers (a load balancer or firewall that swallows requests):
// the SDK alone would wait for ever, holding a locked step's transaction and the KEK's registry row. rekey bounds
// every AWS call by REKEY_AWS_TIMEOUT, and the failure names the store, the call and the setting.
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyMaterialError } from '../../src/errors';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { within } from '../helpers/temporal';

describe('an AWS call that gets no answer', () => {
  let server: net.Server;
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  let endpoint = '';
  beforeAll(async () => {
    // Reads what it is sent and never writes a byte back.
    server = net.createServer((socket) => {
      accepted++;
      sockets.add(socket);
      socket.on('data', () => undefined);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const env = (extra: Record<string, string>) => ({
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'testing',
    AWS_SECRET_ACCESS_KEY: 'testing',
    AWS_ENDPOINT_URL: endpoint,
    ...extra,
  });

  it('fails after REKEY_AWS_TIMEOUT with the store, the call and the setting named, and each attempt is a new request', async () => {
    const before = accepted;
    const keys = KmsKeys.fromEnv(env({ REKEY_AWS_TIMEOUT: '1', AWS_MAX_ATTEMPTS: '2' }));
    try {
      // Two attempts of one second each, with the SDK's backoff between: far inside the bound, which only makes a
      // hang fail with its reason.
      const failure = await within(
        keys.reload().then(
          () => new Error('reload succeeded against an endpoint that never answers'),
          (err: unknown) => err,
        ),
        60_000,
        () => 'the KMS call was still waiting after 60 s: REKEY_AWS_TIMEOUT did not bound it',
      );
      expect(failure).toBeInstanceOf(Error);
      expect((failure as Error).message).toMatch(
        /^AWS KMS.*: kms:ListAliases got no answer in time \(REKEY_AWS_TIMEOUT\)/,
      );
      expect(failure).not.toBeInstanceOf(KeyMaterialError); // a retry may get an answer: Temporal tries the step again
      expect(accepted - before).toBe(2);
    } finally {
      keys.close();
    }
  });

  it('refuses a timeout that is not a number of seconds from 1 to 3600, naming the variable', () => {
    for (const value of ['0', 'soon', '3601']) {
      expect(() => awsClientConfig(env({ REKEY_AWS_TIMEOUT: value }), 'KMS')).toThrow(
        new KeyMaterialError(
          `REKEY_AWS_TIMEOUT must be a number of seconds from 1 to 3600, got '${value}'`,
          'REKEY_AWS_TIMEOUT',
        ),
      );
    }
    expect(awsClientConfig(env({ REKEY_AWS_TIMEOUT: '30s' }), 'KMS').requestHandler.requestTimeout).toBe(30_000);
  });
});
