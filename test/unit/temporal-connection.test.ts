// rekey's processes reach a Temporal frontend that requires mTLS (issue 24, finding 6: the way to close the frontend
// must leave rekey able to use it). The variables map to the SDK's options, contradictions are refused, and against a
// TLS server that requires a client certificate (Node's tls, with certificates openssl makes for the test) both of
// rekey's connections (the client's and the worker's native one) present the certificate and check the server's.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors';
import { temporalConnectionOptions } from '../../src/temporal-connection';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-tls-'));
const file = (name: string) => path.join(dir, name);

function openssl(...args: string[]): void {
  const result = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  if (result.error) throw new Error(`this test makes its certificates with openssl: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`);
}

/** A CA, and a certificate it signs for `name` (DNS name and CN) used for `usage` (serverAuth or clientAuth). */
function issue(name: string, usage: 'serverAuth' | 'clientAuth'): void {
  fs.writeFileSync(file(`${name}.ext`), `subjectAltName=DNS:${name}\nextendedKeyUsage=${usage}\n`);
  openssl(
    ...['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
    ...['-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`],
  );
  openssl(
    ...['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial'],
    ...['-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`],
  );
}

describe('Temporal connection options from the environment', () => {
  it('without TLS variables: the address alone, in clear (the shipped compose file, on its own network)', () => {
    expect(temporalConnectionOptions('temporal:7233', {})).toEqual({ address: 'temporal:7233' });
  });

  it('mTLS: the client certificate, its key, the CA to check the server by and its name, read from the files', () => {
    fs.writeFileSync(file('a.pem'), 'CERT');
    fs.writeFileSync(file('a.key'), 'KEY');
    fs.writeFileSync(file('a-ca.pem'), 'CA');
    const options = temporalConnectionOptions('temporal:7233', {
      TEMPORAL_TLS_CLIENT_CERT_PATH: file('a.pem'),
      TEMPORAL_TLS_CLIENT_KEY_PATH: file('a.key'),
      TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('a-ca.pem'),
      TEMPORAL_TLS_SERVER_NAME: 'temporal-frontend',
    });
    expect(options).toEqual({
      address: 'temporal:7233',
      tls: {
        serverNameOverride: 'temporal-frontend',
        serverRootCACertificate: Buffer.from('CA'),
        clientCertPair: { crt: Buffer.from('CERT'), key: Buffer.from('KEY') },
      },
    });
  });

  it('an API key (or a JWT for the claim mapper) turns TLS on; TEMPORAL_TLS=true alone uses the system CAs', () => {
    expect(temporalConnectionOptions('t:7233', { TEMPORAL_API_KEY: 'k' })).toEqual({
      address: 't:7233',
      tls: {},
      apiKey: 'k',
    });
    expect(temporalConnectionOptions('t:7233', { TEMPORAL_TLS: 'true' })).toEqual({ address: 't:7233', tls: {} });
  });

  it('refuses what cannot be meant: half a certificate pair, TLS off beside TLS settings, a file it cannot read', () => {
    expect(() => temporalConnectionOptions('t:7233', { TEMPORAL_TLS_CLIENT_CERT_PATH: file('a.pem') })).toThrow(
      /TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH go together/,
    );
    expect(() => temporalConnectionOptions('t:7233', { TEMPORAL_TLS: 'false', TEMPORAL_API_KEY: 'k' })).toThrow(
      /TEMPORAL_TLS=false, but/,
    );
    expect(() => temporalConnectionOptions('t:7233', { TEMPORAL_TLS: 'yes' })).toThrow(ConfigError);
    expect(() =>
      temporalConnectionOptions('t:7233', { TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('missing.pem') }),
    ).toThrow(/TEMPORAL_TLS_SERVER_CA_CERT_PATH: cannot read .*missing\.pem: ENOENT/);
  });
});

describe('against a server that requires a client certificate', () => {
  let server: tls.Server;
  let address: string;
  const presented: string[] = [];
  const refused: string[] = [];
  beforeAll(async () => {
    openssl(
      ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
      ...['-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=rekey-test-ca'],
    );
    issue('temporal-frontend', 'serverAuth');
    // One certificate per connection under test, so that one's retries cannot pass for another's handshake.
    issue('rekey-client', 'clientAuth');
    issue('rekey-native', 'clientAuth');
    server = tls.createServer({
      key: fs.readFileSync(file('temporal-frontend.key')),
      cert: fs.readFileSync(file('temporal-frontend.pem')),
      ca: fs.readFileSync(file('ca.pem')),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
    });
    // The handshake is what is under test: a client that completed it showed a certificate this CA signed.
    server.on('secureConnection', (socket) => {
      presented.push(String(socket.getPeerCertificate().subject?.CN));
      socket.destroy();
    });
    server.on('tlsClientError', (err) => refused.push(err.message));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    if (server) await new Promise((resolve) => server.close(resolve));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const mtls = (name: string) => ({
    TEMPORAL_TLS_CLIENT_CERT_PATH: file(`${name}.pem`),
    TEMPORAL_TLS_CLIENT_KEY_PATH: file(`${name}.key`),
    TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('ca.pem'),
    TEMPORAL_TLS_SERVER_NAME: 'temporal-frontend',
  });

  it("the client's connection (admin API, CLI) presents rekey's certificate and accepts the server by the CA", async () => {
    presented.length = 0;
    // The server here speaks no gRPC, so the connection fails after the handshake; the handshake is what counts.
    await Connection.connect({
      ...temporalConnectionOptions(address, mtls('rekey-client')),
      connectTimeout: '3s',
    }).then(
      (c) => c.close(),
      () => undefined,
    );
    expect(presented).toContain('rekey-client');
  });

  it("the worker's native connection presents rekey's certificate and accepts the server by the CA", async () => {
    presented.length = 0;
    await NativeConnection.connect(temporalConnectionOptions(address, mtls('rekey-native'))).then(
      (c) => c.close(),
      () => undefined,
    );
    expect(presented).toContain('rekey-native');
  });

  it('without the client certificate the server refuses the handshake (what the shipped mTLS setup relies on)', async () => {
    presented.length = 0;
    refused.length = 0;
    const { TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME } = mtls('rekey-client');
    await Connection.connect({
      ...temporalConnectionOptions(address, { TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME }),
      connectTimeout: '3s',
    }).then(
      (c) => c.close(),
      () => undefined,
    );
    // No handshake completed without a certificate (the others' retries still show theirs), and one was refused.
    expect(presented.filter((cn) => !cn.startsWith('rekey-'))).toEqual([]);
    expect(refused.some((message) => /certificate/i.test(message))).toBe(true);
  });
});
