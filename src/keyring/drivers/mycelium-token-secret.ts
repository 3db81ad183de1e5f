import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { kekFingerprint } from '../../envelope/dek-wrapping';
import type { SecretSource } from '../../targets/target';
import { sharedRowCrypto, type RowCrypto } from '../../crypto/row-crypto';
import { LocalCipher, type DekCipher } from '../cipher';
import {
  refuseClaim,
  refuseKeyBytes,
  type DestroyOutcome,
  type ProvisionOptions,
  type RecordedKek,
  type StoreDriver,
  type StoredKek,
} from '../driver';
import { VaultHttp } from '../vault-http';
import { KeyMaterialError, OperatorMustActError } from '../../errors';

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** Mycelium's KEK: SHA-256 of the token_secret UUID's 16 raw bytes (not of its text). No salt, no KDF. */
export function myceliumKek(tokenSecret: string, source: string): Buffer {
  const text = tokenSecret.trim();
  if (!UUID.test(text)) {
    throw new KeyMaterialError(
      `${source} must hold the gateway's token_secret, a UUID such as 550e8400-e29b-41d4-a716-446655440000: it holds ${text.length} characters that are not one`,
      source,
    );
  }
  return createHash('sha256')
    .update(Buffer.from(text.replace(/-/g, ''), 'hex'))
    .digest();
}

function describeSource(source: SecretSource): string {
  if ('env' in source) return source.env;
  if ('file' in source) return `file ${source.file}`;
  const { mount = 'secret', path, field, version } = source.vault;
  return `Vault ${mount}/${path} field ${field}${version === undefined ? '' : ` version ${version}`}`;
}

function readLocal(source: { env: string } | { file: string }, env: NodeJS.ProcessEnv): string | undefined {
  if ('env' in source) {
    const value = env[source.env];
    return value === undefined || value.trim() === '' ? undefined : value;
  }
  try {
    return fs.readFileSync(source.file, 'utf8');
  } catch (err) {
    throw new KeyMaterialError(
      `${describeSource(source)} cannot be read: ${(err as NodeJS.ErrnoException).code}`,
      source.file,
    );
  }
}

/** A field of a KV v2 secret; undefined when the secret (or that version) does not exist or has no such field. */
async function readVault(
  source: { vault: { path: string; field: string; mount?: string; version?: number } },
  vault: VaultHttp,
): Promise<string | undefined> {
  const { mount = 'secret', path, field, version } = source.vault;
  const answer = await vault.send<{ data: { data: Record<string, unknown> | null } }>(
    'GET',
    `${mount}/data/${path}${version === undefined ? '' : `?version=${version}`}`,
    { operation: 'kv read', needs: ['read'], expect: [404] },
  );
  const value = answer.status === 404 ? undefined : answer.body?.data.data?.[field];
  if (value !== undefined && typeof value !== 'string') {
    throw new KeyMaterialError(`${describeSource(source)} is not a string`, describeSource(source));
  }
  return value === undefined || value.trim() === '' ? undefined : value;
}

type Role = 'current' | 'old';
interface Loaded {
  key: Buffer;
  fingerprint: string;
}

/**
 * Mycelium's KEKs: the gateway's current token_secret (MYC_TOKEN_SECRET, or a file) and, during a rotation, the old
 * one (MYC_OLD_TOKEN_SECRET). Generations are not written next to the secrets, so a rotation names them: its `from`
 * is the old secret and its `to` the current one, as Mycelium's own `rotate-kek --from-version --to-version` does.
 * The registry then records each generation's fingerprint, and every later use is checked against it.
 */
export class MyceliumTokenSecrets implements StoreDriver {
  readonly description: string;
  /** The secrets carry no names: the keyring names the current one for the rotation under way. */
  readonly configuredCurrent = undefined;
  /** The gateway's secrets are the operator's: provision says what to set. */
  readonly makesKeks = false;
  readonly ownerAtCreation = false;
  rows: () => RowCrypto = sharedRowCrypto;
  private loaded = new Map<Role, Loaded>();
  /** The Vault the secrets are read from, when one of them is there. */
  private readonly vault: VaultHttp | undefined;

  constructor(
    private readonly sources: { current: SecretSource; old: SecretSource },
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.description = `Mycelium token secrets (${describeSource(sources.current)}, ${describeSource(sources.old)})`;
    const inVault = [sources.current, sources.old].some((source) => 'vault' in source);
    // Secrets in Vault are read on the first reload (the first step that needs them); the others at once.
    this.vault = inVault ? VaultHttp.fromEnv(env) : undefined;
    if (!inVault) this.loaded = this.decode(this.readLocal());
  }

  /** Both secrets, none of them in Vault. */
  private readLocal(): Map<Role, string | undefined> {
    const texts = new Map<Role, string | undefined>();
    for (const role of ['current', 'old'] as const) {
      const source = this.sources[role];
      if (!('vault' in source)) texts.set(role, readLocal(source, this.env));
    }
    return texts;
  }

  private async read(): Promise<Map<Role, string | undefined>> {
    const texts = new Map<Role, string | undefined>();
    for (const role of ['current', 'old'] as const) {
      const source = this.sources[role];
      texts.set(role, 'vault' in source ? await readVault(source, this.vault!) : readLocal(source, this.env));
    }
    return texts;
  }

  private decode(texts: ReadonlyMap<Role, string | undefined>): Map<Role, Loaded> {
    const loaded = new Map<Role, Loaded>();
    for (const role of ['current', 'old'] as const) {
      const source = this.sources[role];
      const text = texts.get(role);
      if (text === undefined) {
        if (role === 'current') {
          throw new KeyMaterialError(
            `${describeSource(source)} is not set: set it to the gateway's current token_secret (a UUID)`,
            describeSource(source),
          );
        }
        continue;
      }
      const key = myceliumKek(text, describeSource(source));
      loaded.set(role, { key, fingerprint: kekFingerprint(key) });
    }
    return loaded;
  }

  /** The secrets held, by their place (old, current), whatever a rotation names them. */
  slots(): { slot: Role; fingerprint: string }[] {
    return [...this.loaded].map(([slot, { fingerprint }]) => ({ slot, fingerprint }));
  }

  list(): Promise<StoredKek[]> {
    return Promise.resolve(this.slots());
  }

  cipher(kek: { kekId: string; fingerprint: string }): DekCipher | undefined {
    const key = this.copyByFingerprint(kek.fingerprint);
    return key && new LocalCipher(kek.kekId, kek.fingerprint, key, this.description, this.rows);
  }

  // ---- The lifecycle: the gateway's secrets are the operator's to set and remove ----

  private operator(instruction: string): Promise<never> {
    return Promise.reject(new OperatorMustActError(this.description, instruction));
  }

  /** Key bytes open every format. */
  requireFormat(): void {}

  /** A generation no secret holds: the old one (or one no rotation names) is set in the old secret. */
  whereMissing(slot: 'old' | 'current' | undefined): string {
    const hint = slot === 'current' ? '' : `; set ${describeSource(this.sources.old)} to its token_secret`;
    return `${this.description}${hint}`;
  }

  /** The secrets record no owner: a keyspace seeds from the one its gateway uses. */
  refuseSeed(_kekId: string, _keyspace: string): Promise<void> {
    return Promise.resolve();
  }

  ownerOf(_kekId: string): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  adopt(_keyspace: string): Promise<void> {
    return this.operator(`Mycelium's token secrets record no owner: give each keyspace secrets of its own`);
  }

  provision(kekId: string, _options?: ProvisionOptions): Promise<void> {
    return this.operator(
      `rekey cannot make a token_secret for KEK '${kekId}': give the gateway its new token_secret and set the current secret of ${this.description} to it (the one before in the old secret)`,
    );
  }

  claim(_provisioning: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator("Mycelium's token secrets carry no names: nothing to claim");
  }

  promote(_from: string, to: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator(`the gateway must use the new token_secret (KEK '${to}') as its current one`);
  }

  retire(kekId: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator(
      `keep the old token_secret (KEK '${kekId}') until its restore window ends: rekey says when to remove it once it is destroyed`,
    );
  }

  restore(kekId: string, _registry: readonly RecordedKek[]): Promise<void> {
    return this.operator(`put the old token_secret (KEK '${kekId}') back where ${this.description} reads it`);
  }

  destroy(kekId: string, _registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
    return this.operator(
      `rekey cannot remove a token_secret: remove the old token_secret (KEK '${kekId}') from where ${this.description} reads it`,
    );
  }

  /** The secrets record no owner: `rekey keys claim` is refused. */
  claimKey(_kekId: string, _fingerprint: string, _keyspace: string): Promise<'claimed' | 'already'> {
    return refuseClaim(this.description);
  }

  /** Takes no key bytes: `rekey keys import` is refused, saying where to import. */
  importKek(_kekId: string, _key: Buffer, _options: { current: boolean }): Promise<'added' | 'present'> {
    return refuseKeyBytes(this.description);
  }

  private copyByFingerprint(fingerprint: string): Buffer | undefined {
    for (const { key, fingerprint: held } of this.loaded.values()) if (held === fingerprint) return Buffer.from(key);
    return undefined;
  }

  async reload(): Promise<void> {
    const fresh = this.decode(await this.read());
    this.close();
    this.loaded = fresh;
  }

  close(): void {
    for (const { key } of this.loaded.values()) key.fill(0);
    this.loaded.clear();
  }
}
