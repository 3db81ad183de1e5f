// rekey's client of HashiCorp Vault's HTTP API, for the Vault key stores (KV v2 and Transit): the address, token,
// namespace and TLS settings from the environment Vault's own CLI reads (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE,
// VAULT_CACERT, VAULT_CAPATH, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_TLS_SERVER_NAME, VAULT_SKIP_VERIFY), one call
// at a time with Node's http(s), and the translation of Vault's answers that no retry can fix (a denied capability, a sealed
// server, a malformed request) into rekey's errors, naming what to grant or do. A store's logic never reads a status.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { createLogger } from '../observability/logger';
import { KeyMaterialError } from '../errors';

/** The capabilities of Vault's policy language that rekey's calls need. */
export type VaultCapability = 'create' | 'read' | 'update' | 'patch' | 'delete' | 'list';

export interface VaultSettings {
  /** e.g. https://vault.example.com:8200, without /v1. */
  address: string;
  token: string;
  /** Vault Enterprise / HCP namespace (X-Vault-Namespace), if any. */
  namespace?: string;
  /** How long one call may take before it counts as unanswered, in ms. */
  timeoutMs: number;
  /** How an https:// address is reached (absent: the system's CAs, verified, no client certificate). */
  tls?: VaultTls;
}

/** Vault's CLI's TLS settings, read: what Node's TLS client is given. */
export interface VaultTls {
  /** The CAs that verify Vault's certificate, in place of the system's (VAULT_CACERT, else VAULT_CAPATH). */
  ca?: Buffer[];
  /** Where `ca` came from, for messages: `VAULT_CACERT=/path`. */
  caFrom?: string;
  /** A client certificate and its key (VAULT_CLIENT_CERT, VAULT_CLIENT_KEY). */
  cert?: Buffer;
  key?: Buffer;
  /** The name sent as SNI and checked against Vault's certificate (VAULT_TLS_SERVER_NAME). */
  serverName?: string;
  /** VAULT_SKIP_VERIFY: Vault's certificate is not verified (anyone on the path can read and answer every call). */
  skipVerify: boolean;
}

/** What a Vault call did, for the metrics: the operation and whether it succeeded. */
export type VaultRequestListener = (operation: string, outcome: 'ok' | 'error') => void;

/** VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE and VAULT_CLIENT_TIMEOUT (seconds, as Vault's CLI reads it), checked. */
export function vaultSettingsFromEnv(env: NodeJS.ProcessEnv): VaultSettings {
  const address = env.VAULT_ADDR?.trim().replace(/\/+$/, '');
  if (!address) {
    throw new KeyMaterialError(
      'VAULT_ADDR must name the Vault server, e.g. https://vault.example.com:8200',
      'VAULT_ADDR',
    );
  }
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new KeyMaterialError(`VAULT_ADDR must be a URL such as https://vault:8200, got '${address}'`, 'VAULT_ADDR');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new KeyMaterialError(`VAULT_ADDR must start with https:// or http://, got '${address}'`, 'VAULT_ADDR');
  }
  const token = env.VAULT_TOKEN?.trim();
  if (!token) {
    throw new KeyMaterialError(
      "VAULT_TOKEN must hold a Vault token whose policy grants rekey's paths (docs/06-key-stores.md, 'KEKs in Vault', gives the policy)",
      'VAULT_TOKEN',
    );
  }
  const rawTimeout = env.VAULT_CLIENT_TIMEOUT?.trim();
  const seconds = rawTimeout ? Number(rawTimeout.replace(/s$/, '')) : 60;
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 3600) {
    throw new KeyMaterialError(
      `VAULT_CLIENT_TIMEOUT must be a number of seconds from 1 to 3600, got '${rawTimeout}'`,
      'VAULT_CLIENT_TIMEOUT',
    );
  }
  const namespace = env.VAULT_NAMESPACE?.trim() || undefined;
  const tls = vaultTlsFromEnv(env);
  return { address, token, timeoutMs: seconds * 1000, ...(namespace && { namespace }), ...(tls && { tls }) };
}

/**
 * The TLS settings as Vault's CLI reads them: VAULT_CACERT, a PEM file of CA certificates (it takes precedence over
 * VAULT_CAPATH, a directory of PEM files); VAULT_CLIENT_CERT and VAULT_CLIENT_KEY, a client certificate and its key
 * (PEM, both or neither); VAULT_TLS_SERVER_NAME, the name sent as SNI and checked against the certificate;
 * VAULT_SKIP_VERIFY, a boolean as Go parses it (1, t, T, TRUE, true, True and their false forms), which turns
 * verification off. Undefined when none is set. A file that cannot be read is refused naming its variable.
 */
export function vaultTlsFromEnv(env: NodeJS.ProcessEnv): VaultTls | undefined {
  const value = (name: string) => env[name]?.trim() || undefined;
  const caCert = value('VAULT_CACERT');
  const caPath = value('VAULT_CAPATH');
  const clientCert = value('VAULT_CLIENT_CERT');
  const clientKey = value('VAULT_CLIENT_KEY');
  const serverName = value('VAULT_TLS_SERVER_NAME');
  const skip = value('VAULT_SKIP_VERIFY');
  if (!caCert && !caPath && !clientCert && !clientKey && !serverName && !skip) return undefined;
  let skipVerify = false;
  if (skip !== undefined) {
    if (/^(1|t|T|TRUE|true|True)$/.test(skip)) skipVerify = true;
    else if (!/^(0|f|F|FALSE|false|False)$/.test(skip)) {
      throw new KeyMaterialError(
        `VAULT_SKIP_VERIFY must be true or false (as Vault's CLI reads it: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False), got '${skip}'`,
        'VAULT_SKIP_VERIFY',
      );
    }
  }
  if ((clientCert === undefined) !== (clientKey === undefined)) {
    const missing = clientCert ? 'VAULT_CLIENT_KEY' : 'VAULT_CLIENT_CERT';
    throw new KeyMaterialError(`VAULT_CLIENT_CERT and VAULT_CLIENT_KEY go together: ${missing} is not set`, missing);
  }
  const tls: VaultTls = { skipVerify };
  if (caCert) {
    tls.ca = [readTlsFile('VAULT_CACERT', caCert, "a PEM file of the CA certificate(s) that signed Vault's")];
    tls.caFrom = `VAULT_CACERT=${caCert}`;
  } else if (caPath) {
    tls.ca = readCaPath(caPath);
    tls.caFrom = `VAULT_CAPATH=${caPath}`;
  }
  if (clientCert && clientKey) {
    tls.cert = readTlsFile('VAULT_CLIENT_CERT', clientCert, 'a PEM client certificate');
    tls.key = readTlsFile('VAULT_CLIENT_KEY', clientKey, 'the PEM private key of VAULT_CLIENT_CERT');
  }
  if (serverName) tls.serverName = serverName;
  return tls;
}

function readTlsFile(variable: string, file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new KeyMaterialError(
      `${variable} must name ${what}; '${file}' cannot be read: ${(err as Error).message}`,
      variable,
    );
  }
}

/** Every file of the directory that holds a PEM certificate (Vault's own dev TLS directory also holds a key). */
function readCaPath(dir: string): Buffer[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    throw new KeyMaterialError(
      `VAULT_CAPATH must name a directory of PEM CA certificates; '${dir}' cannot be read: ${(err as Error).message}`,
      'VAULT_CAPATH',
    );
  }
  const certificates = names
    .map((name) => path.join(dir, name))
    .filter((file) => fs.statSync(file).isFile())
    .map((file) => readTlsFile('VAULT_CAPATH', file, 'a directory of PEM CA certificates'))
    .filter((pem) => pem.includes('-----BEGIN CERTIFICATE-----'));
  if (certificates.length === 0) {
    throw new KeyMaterialError(
      `VAULT_CAPATH must name a directory of PEM CA certificates; '${dir}' holds none`,
      'VAULT_CAPATH',
    );
  }
  return certificates;
}

/** Node's codes for a certificate it could not verify: no retry fixes them, the settings do. */
const UNVERIFIED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** One HTTP(S) exchange with Vault within `timeoutMs`: its status and body (for https, through `agent`'s TLS). */
export function vaultExchange(
  url: string,
  options: { method: string; headers: Record<string, string>; body?: string; agent?: https.Agent; timeoutMs: number },
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const client = url.startsWith('https:') ? https : http;
    const req = client.request(
      url,
      {
        method: options.method,
        headers: options.headers,
        ...(options.agent && { agent: options.agent }),
        timeout: options.timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${options.timeoutMs / 1000}s`)));
    req.on('error', reject);
    req.end(options.body);
  });
}

let tlsWarnings: ((message: string) => void) | undefined;

/** Where a warning about the TLS settings goes by default: rekey's JSON log. */
function warnOfTls(message: string): void {
  if (!tlsWarnings) {
    const logger = createLogger();
    tlsWarnings = (text) => logger.warn({ variable: 'VAULT_SKIP_VERIFY' }, text);
  }
  tlsWarnings(message);
}

/** A mount or a path inside one as rekey's settings name it: no leading or trailing '/', no '..'. */
export function vaultPath(value: string, variable: string, example: string): string {
  const trimmed = value.trim().replace(/^\/+|\/+$/g, '');
  if (trimmed === '' || !/^[A-Za-z0-9._/-]+$/.test(trimmed) || trimmed.split('/').some((p) => p === '' || p === '..')) {
    throw new KeyMaterialError(
      `${variable} must be a Vault path of letters, digits, '.', '_', '-' and '/', e.g. ${example}; got '${value}'`,
      variable,
    );
  }
  return trimmed;
}

/** An answer of Vault that the caller reads itself (a status it expects). */
export interface VaultAnswer<T> {
  status: number;
  body: T | undefined;
  errors: string[];
}

export interface VaultCall {
  /** What the call does, for the metrics and messages: e.g. `kv write`, `transit rewrap`. */
  operation: string;
  /** The capabilities on `path` the call needs: named when Vault denies it. */
  needs: readonly VaultCapability[];
  body?: unknown;
  /** Statuses the caller reads itself (404: not there; 400: a check-and-set that did not match). */
  expect?: readonly number[];
  contentType?: string;
}

/**
 * One Vault server as one token sees it. Every call carries the token (and the namespace) and a timeout; its answer is
 * either what the caller asked for, a KeyMaterialError that says what to fix (never retried: a denied capability, an
 * invalid token, a sealed server, a request Vault refuses), or a plain Error that a retry may fix (no answer, a
 * standby, a server error), which Temporal retries.
 */
export class VaultHttp {
  readonly address: string;
  readonly description: string;

  private readonly agent: https.Agent | undefined;

  /** `warn` takes the warning that VAULT_SKIP_VERIFY turns verification off (by default, rekey's JSON log). */
  constructor(
    private readonly settings: VaultSettings,
    private readonly onRequest?: VaultRequestListener,
    warn: (message: string) => void = warnOfTls,
  ) {
    this.address = settings.address;
    this.description = `Vault at ${settings.address}${settings.namespace ? ` (namespace ${settings.namespace})` : ''}`;
    const { tls } = settings;
    if (settings.address.startsWith('https:')) {
      this.agent = new https.Agent({
        keepAlive: true,
        ...(tls?.ca && { ca: tls.ca }),
        ...(tls?.cert && { cert: tls.cert, key: tls.key }),
        ...(tls?.serverName && { servername: tls.serverName }),
        rejectUnauthorized: !tls?.skipVerify,
      });
      if (tls?.skipVerify) {
        warn(
          `VAULT_SKIP_VERIFY is set: rekey does not verify the certificate of ${this.description}, so anyone on the network path can read its token and its keys and answer in Vault's place; give Vault's CA in VAULT_CACERT instead`,
        );
      }
    }
  }

  static fromEnv(
    env: NodeJS.ProcessEnv,
    onRequest?: VaultRequestListener,
    warn?: (message: string) => void,
  ): VaultHttp {
    return new VaultHttp(vaultSettingsFromEnv(env), onRequest, warn);
  }

  /** As `send`, for a call whose only expected answer is success: its body. */
  async call<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, call: VaultCall): Promise<T> {
    return (await this.send<T>(method, path, call)).body as T;
  }

  /**
   * One call to `/v1/<path>`. Success (2xx) and the statuses in `call.expect` are returned; every other answer
   * throws (see the class).
   */
  async send<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, call: VaultCall): Promise<VaultAnswer<T>> {
    let status: number;
    let text: string;
    try {
      ({ status, text } = await vaultExchange(`${this.address}/v1/${path}`, {
        method,
        headers: {
          'X-Vault-Token': this.settings.token,
          ...(this.settings.namespace && { 'X-Vault-Namespace': this.settings.namespace }),
          ...(call.body !== undefined && { 'Content-Type': call.contentType ?? 'application/json' }),
        },
        ...(call.body !== undefined && { body: JSON.stringify(call.body) }),
        ...(this.agent && { agent: this.agent }),
        timeoutMs: this.settings.timeoutMs,
      }));
    } catch (err) {
      this.onRequest?.(call.operation, 'error');
      const code = (err as NodeJS.ErrnoException).code;
      const cause = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
      if (code !== undefined && UNVERIFIED.has(code)) throw this.unverified(method, path, call, cause);
      // Retried by Temporal: a restarting server or a network outage ends.
      throw new Error(`${this.description} did not answer ${call.operation} (${method} /v1/${path}): ${cause}`);
    }
    let body: T | undefined;
    try {
      body = text ? (JSON.parse(text) as T) : undefined;
    } catch {
      body = undefined;
    }
    const errors = ((body as { errors?: unknown } | undefined)?.errors as string[] | undefined) ?? [];
    const ok = (status >= 200 && status < 300) || call.expect?.includes(status) === true;
    this.onRequest?.(call.operation, ok ? 'ok' : 'error');
    if (ok) return { status, body, errors };
    throw this.failure(method, path, call, status, errors, text);
  }

  /** Vault's certificate could not be verified: what to set, by the reason. No retry fixes it. */
  private unverified(method: string, path: string, call: VaultCall, cause: string): KeyMaterialError {
    const { tls } = this.settings;
    const nameMismatch = /altname|hostname|Host:/i.test(cause);
    const fix = nameMismatch
      ? `its certificate does not hold the name checked (VAULT_TLS_SERVER_NAME${tls?.serverName ? ` '${tls.serverName}'` : ', else the host of VAULT_ADDR'}): set VAULT_TLS_SERVER_NAME to a name it holds`
      : tls?.caFrom
        ? `it is not signed by a CA of ${tls.caFrom}: give the CA that signed Vault's certificate in VAULT_CACERT (a PEM file) or VAULT_CAPATH (a directory)`
        : "give the CA that signed Vault's certificate in VAULT_CACERT (a PEM file) or VAULT_CAPATH (a directory of them)";
    return new KeyMaterialError(
      `${this.description} presented a certificate rekey cannot verify for ${call.operation} (${method} /v1/${path}): ${cause}; ${fix}. Nothing was sent`,
      nameMismatch ? 'VAULT_TLS_SERVER_NAME' : 'VAULT_CACERT',
    );
  }

  private failure(
    method: string,
    path: string,
    call: VaultCall,
    status: number,
    errors: string[],
    text: string,
  ): Error {
    const said = errors
      .map((e) =>
        e
          .replace(/\s+/g, ' ')
          .replace(/^\d+ errors? occurred: /, '')
          .trim(),
      )
      .join('; ');
    const what = `${call.operation} (${method} /v1/${path})`;
    if (status === 403) {
      if (errors.some((e) => /invalid token/i.test(e))) {
        return new KeyMaterialError(
          `${this.description} refused VAULT_TOKEN for ${what}: the token is not valid (expired, revoked or mistyped): give rekey a valid token`,
          'VAULT_TOKEN',
        );
      }
      return new KeyMaterialError(
        `${this.description} denied ${what}: the token's policy must grant the capability ${call.needs.map((c) => `"${c}"`).join(' and ')} on path "${path}" (docs/06-key-stores.md, 'KEKs in Vault', gives rekey's policy)`,
        'VAULT_TOKEN',
      );
    }
    if (status === 503 && errors.some((e) => /sealed/i.test(e))) {
      return new KeyMaterialError(
        `${this.description} is sealed: rekey did not ${call.operation} and does nothing more until it is unsealed ('vault operator unseal'); then run the rotation again`,
        this.description,
      );
    }
    if (status === 400 || status === 404 || status === 405) {
      return new KeyMaterialError(`${this.description} refused ${what} with ${status}: ${said || text.trim()}`, path);
    }
    // 429 (a standby), 412 (a replica behind), 5xx: a retry may succeed.
    return new Error(`${this.description} answered ${what} with ${status}: ${said || text.trim()}`);
  }

  /**
   * Proves before anything is written that the token holds every capability rekey's steps on these paths need
   * (sys/capabilities-self, which Vault's default policy grants): refused naming each missing capability and path, so
   * that a step never fails halfway for want of one.
   */
  async requireCapabilities(
    needed: Readonly<Record<string, readonly VaultCapability[]>>,
    purpose: string,
  ): Promise<void> {
    const paths = Object.keys(needed);
    const answer = await this.call<{ data?: Record<string, string[]> } & Record<string, unknown>>(
      'POST',
      'sys/capabilities-self',
      { operation: 'capabilities check', needs: ['update'], body: { paths } },
    );
    const held = answer.data ?? {};
    const missing: string[] = [];
    for (const path of paths) {
      const capabilities = held[path] ?? [];
      if (capabilities.includes('root')) continue;
      const lacking = needed[path]!.filter((c) => !capabilities.includes(c) || capabilities.includes('deny'));
      if (lacking.length > 0) missing.push(`${lacking.map((c) => `"${c}"`).join(', ')} on "${path}"`);
    }
    if (missing.length === 0) return;
    throw new KeyMaterialError(
      `${this.description}: the token's policy lacks ${missing.join('; ')}, which ${purpose} needs: nothing was written. Grant them (docs/06-key-stores.md, 'KEKs in Vault', gives rekey's policy) and run it again`,
      'VAULT_TOKEN',
    );
  }
}
