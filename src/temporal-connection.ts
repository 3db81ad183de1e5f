// How rekey's processes (worker, admin API, CLI) reach Temporal's frontend: its address, and, where the frontend
// requires them, TLS (mTLS with a client certificate) and an API key or JWT sent as `authorization: Bearer …` (what
// Temporal's default claim mapper reads). The variables are the ones Temporal's own CLI and SDKs read
// (https://docs.temporal.io/references/client-environment-configuration), so one environment serves both.
import fs from 'node:fs';
import type { TLSConfig } from '@temporalio/client';
import { ConfigError } from './errors';

export interface TemporalConnectionOptions {
  address: string;
  tls?: TLSConfig;
  apiKey?: string;
}

/** The variables read here, in the order a message names them. */
export const TEMPORAL_TLS_VARIABLES = [
  'TEMPORAL_TLS',
  'TEMPORAL_TLS_CLIENT_CERT_PATH',
  'TEMPORAL_TLS_CLIENT_KEY_PATH',
  'TEMPORAL_TLS_SERVER_CA_CERT_PATH',
  'TEMPORAL_TLS_SERVER_NAME',
  'TEMPORAL_API_KEY',
] as const;

function readPem(variable: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ConfigError(`${variable}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/**
 * The connection options for `address` from the environment. TLS is on when TEMPORAL_TLS=true, or when a
 * certificate, a CA, a server name or an API key is given (an API key never travels in clear); TEMPORAL_TLS=false
 * beside any of those is refused, as is a client certificate without its key (or the reverse).
 */
export function temporalConnectionOptions(
  address: string,
  env: NodeJS.ProcessEnv = process.env,
): TemporalConnectionOptions {
  const get = (name: (typeof TEMPORAL_TLS_VARIABLES)[number]) => (env[name] === '' ? undefined : env[name]);
  const flag = get('TEMPORAL_TLS');
  if (flag !== undefined && flag !== 'true' && flag !== 'false') {
    throw new ConfigError(`TEMPORAL_TLS must be true or false, got '${flag}'`);
  }
  const cert = get('TEMPORAL_TLS_CLIENT_CERT_PATH');
  const key = get('TEMPORAL_TLS_CLIENT_KEY_PATH');
  const ca = get('TEMPORAL_TLS_SERVER_CA_CERT_PATH');
  const serverName = get('TEMPORAL_TLS_SERVER_NAME');
  const apiKey = get('TEMPORAL_API_KEY');
  if ((cert === undefined) !== (key === undefined)) {
    throw new ConfigError(
      'TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH go together: set both (mTLS) or neither',
    );
  }
  const wantsTls = [cert, ca, serverName, apiKey].some((v) => v !== undefined);
  if (flag === 'false' && wantsTls) {
    throw new ConfigError(
      'TEMPORAL_TLS=false, but a TLS certificate, CA, server name or TEMPORAL_API_KEY is set: rekey does not send those in clear',
    );
  }
  const options: TemporalConnectionOptions = { address };
  if (flag === 'true' || wantsTls) {
    options.tls = {
      ...(serverName !== undefined && { serverNameOverride: serverName }),
      ...(ca !== undefined && { serverRootCACertificate: readPem('TEMPORAL_TLS_SERVER_CA_CERT_PATH', ca) }),
      ...(cert !== undefined &&
        key !== undefined && {
          clientCertPair: {
            crt: readPem('TEMPORAL_TLS_CLIENT_CERT_PATH', cert),
            key: readPem('TEMPORAL_TLS_CLIENT_KEY_PATH', key),
          },
        }),
    };
  }
  if (apiKey !== undefined) options.apiKey = apiKey;
  return options;
}
