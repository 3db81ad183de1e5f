// rekey's client of HashiCorp Vault's HTTP API, for the Vault key stores (KV v2 and Transit): the address, token and
// namespace from the environment Vault's own CLI reads (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE), one call at a time
// with Node's fetch, and the translation of Vault's answers that no retry can fix (a denied capability, a sealed
// server, a malformed request) into rekey's errors, naming what to grant or do. A store's logic never reads a status.
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
  return { address, token, timeoutMs: seconds * 1000, ...(namespace && { namespace }) };
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

  constructor(
    private readonly settings: VaultSettings,
    private readonly onRequest?: VaultRequestListener,
  ) {
    this.address = settings.address;
    this.description = `Vault at ${settings.address}${settings.namespace ? ` (namespace ${settings.namespace})` : ''}`;
  }

  static fromEnv(env: NodeJS.ProcessEnv, onRequest?: VaultRequestListener): VaultHttp {
    return new VaultHttp(vaultSettingsFromEnv(env), onRequest);
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
    let response: Response;
    let text: string;
    try {
      response = await fetch(`${this.address}/v1/${path}`, {
        method,
        headers: {
          'X-Vault-Token': this.settings.token,
          ...(this.settings.namespace && { 'X-Vault-Namespace': this.settings.namespace }),
          ...(call.body !== undefined && { 'Content-Type': call.contentType ?? 'application/json' }),
        },
        body: call.body === undefined ? undefined : JSON.stringify(call.body),
        signal: AbortSignal.timeout(this.settings.timeoutMs),
      });
      text = await response.text();
    } catch (err) {
      this.onRequest?.(call.operation, 'error');
      const cause = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
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
    const ok = response.ok || call.expect?.includes(response.status) === true;
    this.onRequest?.(call.operation, ok ? 'ok' : 'error');
    if (ok) return { status: response.status, body, errors };
    throw this.failure(method, path, call, response.status, errors, text);
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
