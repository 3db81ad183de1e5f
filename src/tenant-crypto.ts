import { BUILTIN_TARGET } from './targets/builtin';
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import type { Pool } from 'pg';
import { decryptTenantData, encryptTenantData } from './envelope/tenant-data-cipher';
import type { DekCipher } from './keyring/cipher';
import type { StoreDriver } from './keyring/driver';
import { KeyringCiphers } from './keyring/keyring';
import { FleetPresence, heldKeys, reloadForRegistry } from './keyring/fleet-keys';
import { AppInstances } from './store/app-instances';
import { KekRegistry, type KekRecord } from './store/kek-registry';
import { readDatabaseIdentity } from './store/database-identity';
import { keyspaceOf } from './rotation/identity';
import { PRESETS } from './targets/presets';
import { describeTable } from './targets/target';
import { TenantDekStore } from './store/tenant-deks';
import { KekFingerprintMismatchError, KekNotWritableError, UnknownKekError } from './errors';

export interface TenantCryptoOptions {
  db: Pool;
  /** The key store (e.g. `new EnvKeyProvider()`): its KEKs are used through ciphers the registry's fingerprints prove. */
  keys: StoreDriver;
  instanceId?: string;
  /** How stale this process's idea of the current KEK may be: a promotion reaches it within this time. */
  registryTtlMs?: number;
  dekCacheTtlMs?: number;
  dekCacheMax?: number;
  warn?: (message: string) => void;
  /**
   * Who the audit trail (rekey.kek_events) names when this process seeds the registry's first KEK; by default
   * `application (TenantCrypto <instanceId>)`.
   */
  actor?: string;
}

/** A write the database refuses this many times in a row (each after re-reading the registry) fails. */
const MAX_REFUSED_WRITES = 3;

interface CachedDek {
  dek: Buffer;
  expiresAt: number;
}

/**
 * The application's side of envelope encryption: per-tenant DEKs created on first use, wrapped with the current
 * KEK, cached unwrapped for a bounded time, and tenant data encrypted under them as `v2:` ciphertexts.
 */
export class TenantCrypto {
  readonly instanceId: string;
  private readonly registry: KekRegistry;
  private readonly deks: TenantDekStore;
  private readonly instances: AppInstances;
  private readonly cache = new Map<string, CachedDek>();
  private current: { kekId: string; readAt: number } | undefined;
  /** The registry as last read: each KEK's cipher is proved by the fingerprint recorded here. */
  private registered: KekRecord[] = [];
  private readonly keyring: KeyringCiphers;
  private readonly presence: FleetPresence;
  private warnedMismatch = false;

  constructor(private readonly options: TenantCryptoOptions) {
    this.instanceId = options.instanceId ?? `${os.hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
    this.registry = new KekRegistry(options.db, BUILTIN_TARGET);
    this.keyring = new KeyringCiphers({ driver: options.keys, registry: this.registry, target: BUILTIN_TARGET });
    this.deks = new TenantDekStore(options.db);
    this.instances = new AppInstances(options.db, BUILTIN_TARGET);
    this.presence = new FleetPresence(
      () => this.announce(),
      () => this.instances.withdraw(this.instanceId),
      (message) => this.warn(message),
    );
  }

  private get registryTtlMs() {
    return this.options.registryTtlMs ?? 5_000;
  }

  /** Seeds the registry's first active KEK from configuration if it has none, announces this instance, keeps both fresh. */
  async start(): Promise<void> {
    const seed = this.options.keys.configuredCurrent;
    if (seed && !(await this.registry.active())) {
      // A key another keyspace may own (an untagged KMS key under a shared alias prefix) is not taken as this one's.
      await this.options.keys.refuseSeed(seed, await this.keyspace());
      const held = (await this.keyring.held()).find((k) => k.kekId === seed);
      if (!held) throw new UnknownKekError(seed, this.options.keys.description);
      const actor = this.options.actor ?? `application (TenantCrypto ${this.instanceId})`;
      await this.registry.seedActive(seed, held.fingerprint, actor);
    }
    await this.presence.start(this.registryTtlMs);
  }

  /** The keyspace this application writes: rekey's own table in its database. */
  private async keyspace(): Promise<string> {
    const databaseId = await readDatabaseIdentity(this.options.db, "the application's database");
    return keyspaceOf(databaseId, describeTable(PRESETS[BUILTIN_TARGET]!.table)).id;
  }

  /** Withdraws this instance from the fleet (after any announcement under way) and zeroizes the cached DEKs. */
  async stop(): Promise<void> {
    await this.presence.stop();
    for (const entry of this.cache.values()) entry.dek.fill(0);
    this.cache.clear();
  }

  /** Re-reads the active KEK, loads keys added since start (e.g. a newly provisioned KEK), and announces. */
  refresh(): Promise<void> {
    return this.presence.isStopped ? this.readRegistry() : this.presence.now();
  }

  private async readRegistry(): Promise<void> {
    const registered = await this.registry.list();
    const active = registered.find((k) => k.state === 'active');
    if (!active) throw new UnknownKekError('(none active)', 'the KEK registry: seed it with <PREFIX>_CURRENT_KEK_ID');
    await reloadForRegistry(this.keyring, registered);
    const held = (await this.keyring.held()).find((k) => k.kekId === active.kekId);
    if (held !== undefined && held.fingerprint !== active.fingerprint) {
      // Same id, different key: wrapping with it would make every new DEK unreadable to the rest of the fleet.
      throw new KekFingerprintMismatchError(active.kekId, active.fingerprint, held.fingerprint);
    }
    this.registered = registered;
    const configured = this.options.keys.configuredCurrent;
    if (configured && configured !== active.kekId && !this.warnedMismatch) {
      this.warnedMismatch = true;
      this.warn(
        `configuration names '${configured}' as the current KEK, but the registry's active KEK is '${active.kekId}': using the registry`,
      );
    }
    this.current = { kekId: active.kekId, readAt: Date.now() };
  }

  /** Reads the registry and tells the fleet what this instance holds and wraps with. */
  private async announce(): Promise<void> {
    await this.readRegistry();
    const { kekId } = this.current!;
    const held = await heldKeys(this.keyring);
    await this.instances.announce({
      instanceId: this.instanceId,
      ...held,
      wrapKekId: held.unwrapKekIds.includes(kekId) ? kekId : null,
    });
  }

  async currentKekId(): Promise<string> {
    if (!this.current || Date.now() - this.current.readAt > this.registryTtlMs) await this.refresh();
    return this.current!.kekId;
  }

  encrypt(tenantId: string, plaintext: string | Buffer): Promise<string> {
    return this.withDek(tenantId, (dek) => encryptTenantData(dek, tenantId, plaintext));
  }

  decrypt(tenantId: string, ciphertext: string): Promise<Buffer> {
    return this.withDek(tenantId, (dek) => decryptTenantData(dek, tenantId, ciphertext));
  }

  /**
   * Runs `use` on the tenant's DEK within one synchronous step after the cache lookup, so an eviction (which zeroizes
   * the buffer) can never happen between finding the DEK and using it.
   */
  private async withDek<T>(tenantId: string, use: (dek: Buffer) => T): Promise<T> {
    const cached = this.cache.get(tenantId);
    if (cached && cached.expiresAt > Date.now()) return use(cached.dek);
    // The DEK this call loaded is used by this call, whatever the cache's TTL (0: nothing is cached).
    const dek = await this.load(tenantId);
    try {
      return use(dek);
    } finally {
      this.keep(tenantId, dek);
    }
  }

  /**
   * An application write of the tenant's DEK row: the same DEK, re-wrapped with the current KEK, by compare-and-swap.
   * (Whatever else the application updates alongside, the DEK it writes is always wrapped with the current KEK.)
   */
  async rewriteDek(tenantId: string): Promise<void> {
    for (;;) {
      const stored = await this.deks.find(tenantId);
      if (!stored) {
        this.keep(tenantId, await this.load(tenantId));
        return;
      }
      const written = await this.withCurrentKek(async (kekId) =>
        this.deks.compareAndSwap(
          tenantId,
          stored.version,
          kekId,
          await this.withCiphers([stored.kekId, kekId], ([from, to]) => from!.moveTo(to!, tenantId, stored.wrappedDek)),
        ),
      );
      if (written) return;
    }
  }

  /**
   * Runs a write of a wrapped DEK under the current KEK. The database refuses a KEK that may no longer wrap (this
   * process's idea of the current KEK was stale: promoted away, or retired, since it last read the registry): then
   * the registry is read again and the write retried with the KEK it names now.
   */
  private async withCurrentKek<T>(write: (kekId: string) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const kekId = await this.currentKekId();
      try {
        return await write(kekId);
      } catch (err) {
        if (!(err instanceof KekNotWritableError) || attempt >= MAX_REFUSED_WRITES) throw err;
        this.warn(
          `the database refused a DEK wrapped with '${kekId}' (${err.state ?? 'unknown'}): re-reading the current KEK`,
        );
        await this.refresh();
      }
    }
  }

  /** The tenant's DEK, unwrapped from its row or created (wrapped with the current KEK) on first use; the caller owns it. */
  private async load(tenantId: string): Promise<Buffer> {
    let stored = await this.deks.find(tenantId);
    if (!stored) {
      // A DEK drawn for a write the database refused is dropped (zeroized) and a new one drawn for the next KEK.
      let fresh: Buffer | undefined;
      let created: boolean;
      try {
        created = await this.withCurrentKek(async (kekId) => {
          fresh?.fill(0);
          const made = await this.withCiphers([kekId], ([cipher]) => cipher!.newDek(tenantId));
          fresh = made.dek;
          return this.deks.insert(tenantId, kekId, made.wrapped);
        });
      } catch (err) {
        fresh?.fill(0);
        throw err;
      }
      if (created) return fresh!;
      fresh!.fill(0); // another instance created the tenant's DEK first: use theirs
      stored = await this.deks.find(tenantId);
      if (!stored) throw new Error(`tenant '${tenantId}' DEK vanished while being created`);
    }
    const { kekId, wrappedDek } = stored;
    return this.withCiphers([kekId], ([cipher]) => cipher!.open(tenantId, wrappedDek));
  }

  /**
   * Runs `use` with the ciphers of `kekIds`, each proved by the fingerprint the registry recorded when this process
   * last read it (a KEK it did not list then: by the registry's current record), and releases them afterwards.
   */
  private async withCiphers<T>(kekIds: readonly string[], use: (ciphers: DekCipher[]) => Promise<T>): Promise<T> {
    const ciphers: DekCipher[] = [];
    try {
      for (const kekId of kekIds) {
        const record = this.registered.find((k) => k.kekId === kekId) ?? (await this.registry.get(kekId));
        ciphers.push(await this.keyring.cipherFor(kekId, record));
      }
      return await use(ciphers);
    } finally {
      for (const cipher of ciphers) cipher.release();
    }
  }

  /** Caches a DEK for the TTL, or zeroizes it at once when the TTL is 0. */
  private keep(tenantId: string, dek: Buffer): void {
    if ((this.options.dekCacheTtlMs ?? 60_000) <= 0) {
      dek.fill(0);
      return;
    }
    this.remember(tenantId, dek);
  }

  private remember(tenantId: string, dek: Buffer): void {
    const max = this.options.dekCacheMax ?? 10_000;
    while (this.cache.size >= max) {
      const oldest = this.cache.keys().next().value;
      if (oldest === undefined) break;
      this.evict(oldest);
    }
    this.evict(tenantId); // two concurrent loads of one tenant: keep one buffer, zeroize the other
    this.cache.set(tenantId, { dek, expiresAt: Date.now() + (this.options.dekCacheTtlMs ?? 60_000) });
  }

  private evict(tenantId: string): void {
    this.cache.get(tenantId)?.dek.fill(0);
    this.cache.delete(tenantId);
  }

  private warn(message: string): void {
    (this.options.warn ?? ((m: string) => process.stderr.write(`rekey: ${m}\n`)))(message);
  }
}
