// One keyring per keyspace (one per target runtime): the only owner of a KEK's lifecycle. Each step checks the
// lifecycle table and the registry (fingerprints, states, restore windows, the store's owner record, the other
// registries that may hold the key), writes the registry and its event, and only then calls the store driver's hook.
// A store that cannot do a step answers what the operator must do (OperatorMustActError): the keyring either waits on
// it (a KEK the operator must add) or hands the instruction on (a key the operator removes once destroyed).
// Callers ask for a DEK cipher by KEK id and never learn what a store can do.
import type { Pool, PoolClient } from 'pg';
import { canUnwrap } from '../envelope/kek-lifecycle';
import { nextKekId } from './local-keys';
import type { LabelProof } from '../rotation/label-proof';
import { inTransaction } from '../store/connect';
import type { KekRecord, KekRegistry } from '../store/kek-registry';
import type { DekCipher } from './cipher';
import type { DestroyOutcome, ProvisionOptions, StoreDriver, StoredKek } from './driver';
import {
  KekFingerprintMismatchError,
  KekNotHeldError,
  KekRestoreRefusedError,
  KekRetiredError,
  KeyMaterialError,
  KeyspaceMismatchError,
  OperatorMustActError,
  UnknownKekError,
} from '../errors';

export interface KeyringCiphersOptions {
  /** The store's driver; a function opens it when a step first needs the store (a registry-only step never does). */
  driver: StoreDriver | (() => StoreDriver);
  registry: KekRegistry;
  /** The target's name, for messages. */
  target: string;
}

export interface KeyringOptions extends KeyringCiphersOptions {
  /** The keyspace's database, where its registry is. */
  db: Pool;
  /** The keyspace this keyring belongs to (`<database id>/<schema.table>`). */
  keyspace: string;
  /**
   * Before a KEK is retired (its store may stop it for every reader: KMS disables it, Transit raises
   * min_decryption_version, Vault KV soft-deletes it) or its material destroyed: throws (RetireRefusedError) while
   * another registry this process can see holds a key with that fingerprint, else says what it checked (finding 1 of
   * issue 24).
   */
  otherRegistries: (kekId: string, fingerprint: string, action: 'retiring' | 'destroying') => Promise<string>;
}

/** A key the store holds, with the name this keyspace uses for it. */
export interface HeldKek extends StoredKek {
  kekId: string;
}

/** A step done in the registry whose part in the store is the operator's: what they must do. */
export interface StepOutcome {
  operatorMust?: string;
}

export type RetireOutcome = { refused: LabelProof } | ({ retired: KekRecord } & StepOutcome);

export type DestroyStep =
  | { outcome: 'destroyed'; detail: string; operatorMustRemove?: true; proof?: LabelProof }
  | { outcome: 'not-yet'; detail: string; waitMs: number }
  | { outcome: 'kept'; detail: string }
  | { outcome: 'refused'; proof: LabelProof; until: Date };

/**
 * The cipher of the key a store holds under `kekId` as it names it, checked against no registry: for seeding and
 * reading a keyspace before its registry records anything (the dev tools, the benches). Everything else asks a keyring.
 * The caller releases it.
 */
export async function storeCipher(driver: StoreDriver, kekId: string): Promise<DekCipher> {
  const held = await storedKek(driver, kekId);
  const cipher = driver.cipher(held);
  if (!cipher) throw new KekNotHeldError(kekId, held.fingerprint, driver.description);
  return cipher;
}

/**
 * The key a store names `kekId` (as last read), with its fingerprint, checked against no registry: what an empty
 * registry is seeded with (the dev tools, `rekey keys generate`). UnknownKekError when it names none.
 */
export async function storedKek(driver: StoreDriver, kekId: string): Promise<{ kekId: string; fingerprint: string }> {
  const held = (await driver.list()).find((k) => k.kekId === kekId);
  if (!held) throw new UnknownKekError(kekId, driver.description);
  return { kekId, fingerprint: held.fingerprint };
}

/** The id `rekey keys generate` gives a new KEK without --id: the next vN after every id the store names. */
export async function nextStoredKekId(driver: StoreDriver): Promise<string> {
  return nextKekId((await driver.list()).flatMap((k) => (k.kekId === undefined ? [] : [k.kekId])));
}

/**
 * A new KEK made in the store outside any keyspace's lifecycle (`rekey keys generate`, the demo): under `kekId`, else
 * the next vN (nextStoredKekId), by the driver's provision (a store rekey only reads answers what the operator must
 * add). Its id and fingerprint.
 */
export async function generateKek(
  driver: StoreDriver,
  kekId?: string,
  options: ProvisionOptions = {},
): Promise<{ kekId: string; fingerprint: string }> {
  const id = kekId ?? (await nextStoredKekId(driver));
  await driver.provision(id, options);
  return storedKek(driver, id);
}

/** Runs a driver's hook; an answer of what the operator must do is returned, not thrown. */
async function orInstruction(hook: () => Promise<unknown>): Promise<StepOutcome> {
  try {
    await hook();
    return {};
  } catch (err) {
    if (err instanceof OperatorMustActError) return { operatorMust: err.instruction };
    throw err;
  }
}

/**
 * The part of a keyring that reads keys: it names them, and hands out a KEK's cipher once the registry's fingerprint
 * proves it. The application's (TenantCrypto) is this alone; the worker's Keyring adds the lifecycle.
 */
export class KeyringCiphers {
  private opened: StoreDriver | undefined;
  protected readonly registry: KekRegistry;
  /** The names a rotation gives keys the store does not name (Mycelium's old and current token_secret). */
  private rotation: { from: string; to: string } | undefined;

  constructor(private readonly base: KeyringCiphersOptions) {
    this.registry = base.registry;
  }

  protected get driver(): StoreDriver {
    const { driver } = this.base;
    return (this.opened ??= typeof driver === 'function' ? driver() : driver);
  }

  get description(): string {
    return this.driver.description;
  }

  /** Whether the store makes new KEKs (else the operator adds them, and a provision says what to add). */
  get makesKeks(): boolean {
    return this.driver.makesKeks;
  }

  /**
   * The names of the rotation under way, for a store that does not name its keys: its old key is `from`, its current
   * one `to`. The one place that naming happens.
   */
  nameRotation(from: string, to: string): void {
    this.rotation = { from, to };
  }

  /** The place the rotation under way names `kekId` for (its `to` when both are one), if it names it. */
  private slotOf(kekId: string): 'old' | 'current' | undefined {
    if (this.rotation?.to === kekId) return 'current';
    return this.rotation?.from === kekId ? 'old' : undefined;
  }

  /** The KEK the store's configuration names as current: for a store that does not name its keys, the rotation's `to`. */
  async configuredCurrent(): Promise<string | undefined> {
    if (this.driver.configuredCurrent !== undefined) return this.driver.configuredCurrent;
    const current = (await this.driver.list()).find((k) => k.kekId === undefined && k.slot === 'current');
    return current && this.rotation?.to;
  }

  /** Every key the store holds under the name this keyspace uses; keys no name reaches yet are left out. */
  async held(): Promise<HeldKek[]> {
    const named: HeldKek[] = [];
    for (const key of await this.driver.list()) {
      const kekId =
        key.kekId ??
        (key.slot === 'old' ? this.rotation?.from : key.slot === 'current' ? this.rotation?.to : undefined);
      if (kekId !== undefined) named.push({ ...key, kekId });
    }
    return named;
  }

  /**
   * The fingerprint of the key the store holds under `kekId` (as last read), by the names this keyspace uses: what an
   * empty registry is seeded with. UnknownKekError when it holds none. Not a proof: `cipher` checks the registry's.
   */
  async fingerprintOf(kekId: string): Promise<string> {
    const held = (await this.held()).find((k) => k.kekId === kekId);
    if (!held) throw new UnknownKekError(kekId, this.driver.whereMissing(this.slotOf(kekId)));
    return held.fingerprint;
  }

  async reload(): Promise<void> {
    await this.driver.reload();
  }

  /**
   * The cipher of `kekId`, trusted by fingerprint, not by name: once the registry has recorded a KEK, only a key with
   * that fingerprint is used, and a key held under the same name with another fingerprint is refused. A KEK the
   * registry no longer lets unwrap (retired, destroyed) is refused. The caller releases the cipher.
   */
  async cipher(kekId: string): Promise<DekCipher> {
    const registered = await this.registry.get(kekId);
    return this.cipherFor(kekId, registered);
  }

  /** As `cipher`, given the registry's record of `kekId` (undefined: not recorded), as the caller last read it. */
  async cipherFor(kekId: string, registered: KekRecord | undefined): Promise<DekCipher> {
    if (registered !== undefined && !canUnwrap(registered.state)) {
      throw new KekRetiredError(kekId, this.base.target, registered.state);
    }
    let held = await this.held();
    // A KEK another process provisioned, or a remote store not read yet: read the store again first.
    if (!held.some((k) => k.kekId === kekId || k.fingerprint === registered?.fingerprint)) {
      await this.driver.reload();
      held = await this.held();
    }
    const byName = held.find((k) => k.kekId === kekId);
    const fingerprint = registered?.fingerprint ?? byName?.fingerprint;
    if (fingerprint === undefined) throw new UnknownKekError(kekId, this.driver.whereMissing(this.slotOf(kekId)));
    if (byName !== undefined && byName.fingerprint !== fingerprint) {
      throw new KekFingerprintMismatchError(kekId, fingerprint, byName.fingerprint);
    }
    const cipher = this.driver.cipher({ kekId, fingerprint });
    if (!cipher) throw new KekNotHeldError(kekId, fingerprint, this.driver.description);
    return cipher;
  }

  /**
   * Runs `use` with the cipher of `kekId` for a read-only trial and nothing else (the retire and destroy steps' proof of
   * the legacy values only it may open), releasing (zeroizing) it afterwards, whatever happens. Trusted by the
   * registry's recorded fingerprint whatever its state short of destroyed, so a retired KEK is tried too; `use` gets
   * undefined where there is nothing to try: not recorded, destroyed, or the store no longer gives it (Vault KV's soft
   * delete, Transit's minimum version, a key gone). The caller decides what undefined means (fail closed).
   */
  async withTrialCipher<T>(kekId: string, use: (cipher: DekCipher | undefined) => Promise<T>): Promise<T> {
    const registered = await this.registry.get(kekId);
    let cipher: DekCipher | undefined;
    if (registered !== undefined && registered.state !== 'destroyed') {
      try {
        cipher = await this.cipherFor(kekId, { ...registered, state: 'decrypt_only' });
      } catch {
        cipher = undefined;
      }
    }
    try {
      return await use(cipher);
    } finally {
      cipher?.release();
    }
  }

  /** Runs `use` with the ciphers of `kekIds` (registry-checked), releasing every one afterwards, whatever happens. */
  async withCiphers<T>(kekIds: readonly string[], use: (ciphers: DekCipher[]) => Promise<T>): Promise<T> {
    const ciphers: DekCipher[] = [];
    try {
      for (const kekId of kekIds) ciphers.push(await this.cipher(kekId));
      return await use(ciphers);
    } finally {
      for (const cipher of ciphers) cipher.release();
    }
  }

  close(): void {
    this.opened?.close();
  }
}

export class Keyring extends KeyringCiphers {
  constructor(private readonly options: KeyringOptions) {
    super(options);
  }

  get keyspace(): string {
    return this.options.keyspace;
  }

  /** The id a new KEK gets: the next vN after every id the store or the registry knows. */
  async proposeKekId(): Promise<string> {
    await this.driver.reload();
    const known = new Set([
      ...(await this.held()).map((k) => k.kekId),
      ...(await this.registry.list()).map((k) => k.kekId),
    ]);
    return nextKekId([...known]);
  }

  /**
   * Finding 1 of issue 24: a KEK whose store records another keyspace as its owner is not this keyspace's to use,
   * retire, disable or destroy. Refused, naming both keyspaces and what to change.
   */
  async refuseForeign(kekId: string, action: string): Promise<void> {
    const owner = await this.driver.ownerOf(kekId);
    const { keyspace, target } = this.options;
    if (owner === undefined || owner === keyspace) return;
    throw new KeyspaceMismatchError(
      `not ${action} KEK '${kekId}': ${this.driver.description} records it as keyspace ${owner}'s, and target '${target}' is keyspace ${keyspace}. ` +
        `A key store belongs to one keyspace: two that share one destroy each other's keys. Give target '${target}' keys of its own; ` +
        `the owner's own rotations retire and destroy this KEK`,
    );
  }

  /** The store records this keyspace as the owner of every KEK that has none yet (where it records owners at all). */
  async adopt(): Promise<StepOutcome> {
    return orInstruction(async () => this.driver.adopt(this.options.keyspace, await this.registry.list()));
  }

  /**
   * The KEK `kekId` exists in the store (made there if `generate` and not held yet), is this keyspace's, is recorded
   * in the registry with its fingerprint, and wraps and opens. Idempotent. A store rekey may not write answers what
   * the operator must add (OperatorMustActError).
   */
  async provision(
    kekId: string,
    { generate, ...attempt }: { generate: boolean } & Omit<ProvisionOptions, 'owner'>,
  ): Promise<{ fingerprint: string }> {
    const { driver, registry } = this;
    await driver.reload();
    // Before anything is written: the store's names are this registry's (and a key it holds unnamed gets its name).
    // A store that names nothing of rekey's has nothing to claim: the fingerprints below are checked all the same.
    await orInstruction(async () => driver.claim(kekId, await registry.list()));
    if (!(await this.held()).some((k) => k.kekId === kekId)) {
      if (!generate) throw new KeyMaterialError(`KEK '${kekId}' is not in ${driver.description}`, driver.description);
      // Before anything is written: a store one owner records for all its keys (a Vault KV or Secrets Manager secret,
      // a Transit key) that is another keyspace's gets no new KEK.
      await this.refuseForeign(kekId, 'provisioning');
      await driver.provision(kekId, { ...attempt, owner: this.options.keyspace });
    }
    await this.refuseForeign(kekId, 'provisioning');
    const made = (await this.held()).find((k) => k.kekId === kekId);
    if (!made) throw new KekNotHeldError(kekId, '(not made)', driver.description);
    await registry.register(kekId, made.fingerprint);
    const cipher = await this.cipher(kekId);
    try {
      await cipher.selfTest();
      return { fingerprint: cipher.fingerprint };
    } finally {
      cipher.release();
    }
  }

  /** `to` becomes active and `from` decrypt-only in the registry; then the store marks its current key. Idempotent. */
  async promote(from: string, to: string): Promise<StepOutcome> {
    await this.registry.promote(from, to);
    return orInstruction(async () => this.driver.promote(from, to, await this.registry.list()));
  }

  /**
   * Retires `kekId` if no row needs it: the store's owner record is checked first; under a lock on its registry row,
   * `prove` proves every row labelled with it (a KEK already retired was proved then) and the other registries are
   * asked again; only then the registry retires it (restorable for `restoreWindowMs`), and after that the store marks
   * it.
   */
  async retire(
    kekId: string,
    {
      restoreWindowMs,
      prove,
      prepare,
    }: {
      restoreWindowMs: number;
      prove: (client: PoolClient) => Promise<LabelProof>;
      /** Before the lock, once the checks pass, where the KEK is still to retire: the proof's pre-pass. */
      prepare?: () => Promise<void>;
    },
  ): Promise<RetireOutcome> {
    await this.refuseForeign(kekId, 'retiring');
    const { registry } = this;
    // Another keyspace's registry that holds the key still needs it: the store's retire would stop it for that
    // keyspace too. Asked before anything is written, and again on a retried step (before the store's hook).
    const before = await registry.require(kekId);
    await this.options.otherRegistries(kekId, before.fingerprint, 'retiring');
    if (prepare !== undefined && (before.state === 'decrypt_only' || before.state === 'provisioned')) await prepare();
    const outcome = await inTransaction(this.options.db, async (client) => {
      await registry.lock(kekId, client);
      const record = await registry.require(kekId, client);
      if (record.state === 'decrypt_only' || record.state === 'provisioned') {
        const proof = await prove(client);
        // Refused after the transaction commits: the rows it relabelled stay relabelled.
        if (proof.needed > 0) return { refused: proof };
        // Asked again at the act: a registry that came to hold the key while the pre-pass ran (outside the lock,
        // minutes to hours) needs it as much as one that held it before.
        await this.options.otherRegistries(kekId, record.fingerprint, 'retiring');
      }
      return { retired: await registry.retire(kekId, restoreWindowMs, client) };
    });
    if ('refused' in outcome) return outcome;
    // A retry after a failure here finds the registry done and does only this.
    const step = await orInstruction(async () => this.driver.retire(kekId, await registry.list()));
    return { ...outcome, ...step };
  }

  /**
   * Brings a retired KEK back to decrypt-only within its restore window: the store must still hold (or make readable
   * again) the key the registry recorded, the registry records who asked and why in the same transaction, and then
   * the store names the key again. A repeated restore changes nothing.
   */
  async restore(kekId: string, reason: string, actor: string): Promise<KekRecord & StepOutcome> {
    // The store is opened only where a step needs it: an unknown KEK, or one not yet destroyable, never reads it.
    const { registry } = this;
    const refuse = (why: string) =>
      new KekRestoreRefusedError(`KEK '${kekId}' of target '${this.options.target}' cannot be restored: ${why}`);
    const registered = await registry.get(kekId);
    if (!registered) throw new UnknownKekError(kekId, `the registry of target '${this.options.target}'`);
    // A store that stops a key for every reader (Transit's min_decryption_version) restarts it only for its owner.
    await this.refuseForeign(kekId, 'restoring');
    await this.driver.reload();
    // Found by its fingerprint: a store that names its keys only inside a rotation holds it under no name here. A key
    // the store holds under the KEK's id with another fingerprint (a KMS alias moved to another key) is refused.
    const holds = async () => {
      const held = await this.driver.list();
      const byName = held.find((k) => k.kekId === kekId);
      if (byName !== undefined && byName.fingerprint !== registered.fingerprint) {
        throw new KekFingerprintMismatchError(kekId, registered.fingerprint, byName.fingerprint);
      }
      return held.some((k) => k.fingerprint === registered.fingerprint);
    };
    let madeReadable = false;
    if (registered.state === 'retired' && !(await holds())) {
      // A store whose retire makes the key unreadable (Vault KV's soft delete, Transit's min_decryption_version)
      // makes it readable first, proving it is the registered key; a store that cannot says what the operator must do.
      try {
        await this.driver.restore(kekId, await registry.list());
      } catch (err) {
        if (err instanceof OperatorMustActError)
          throw refuse(`${this.driver.description} no longer holds it: ${err.instruction}`);
        throw err;
      }
      madeReadable = true;
      await this.driver.reload();
      if (!(await holds())) throw refuse(`${this.driver.description} no longer holds it`);
    }
    let restored: KekRecord;
    try {
      restored = await registry.restore(kekId, reason.trim(), actor, refuse);
    } catch (err) {
      if (madeReadable) await orInstruction(async () => this.driver.retire(kekId, await registry.list()));
      throw err;
    }
    const step = await orInstruction(async () => this.driver.restore(kekId, await registry.list()));
    return { ...restored, ...step };
  }

  /**
   * The durable step after a retired KEK's restore window, in one transaction holding its registry row: nothing is
   * destroyed while the KEK is restored, or before its window ends by the database's clock; `prove` proves every row
   * still labelled with it, and one that may need it refuses the destruction (the window opens again for
   * `reopenForMs`). Then the store's owner record and every other registry this process can see are checked, the
   * registry marks the KEK destroyed with its event, and only then the store destroys the material (a failure there
   * rolls the registry back). A store rekey may not write says what the operator must remove.
   */
  async destroy(
    kekId: string,
    { prove, reopenForMs }: { prove: (client: PoolClient) => Promise<LabelProof>; reopenForMs: number },
  ): Promise<DestroyStep> {
    // The store is opened only where a step needs it: an unknown KEK, or one not yet destroyable, never reads it.
    const { registry } = this;
    return inTransaction(this.options.db, async (client): Promise<DestroyStep> => {
      await registry.lock(kekId, client);
      const record = await registry.require(kekId, client);
      if (record.state === 'destroyed') return { outcome: 'destroyed', detail: 'already destroyed' };
      if (record.state !== 'retired')
        return { outcome: 'kept', detail: `it is ${record.state} (restored): not destroyed` };
      const now = await registry.now(client);
      if (record.restorableUntil && record.restorableUntil > now) {
        return {
          outcome: 'not-yet',
          detail: `restorable until ${record.restorableUntil.toISOString()}`,
          waitMs: record.restorableUntil.getTime() - now.getTime(),
        };
      }
      const proof = await prove(client);
      if (proof.needed > 0)
        return { outcome: 'refused', proof, until: await registry.reopen(kekId, reopenForMs, client) };
      // Finding 1: the KEK is this keyspace's by its store's record, and no other registry still holds its key.
      await this.refuseForeign(kekId, 'destroying');
      const checked = await this.options.otherRegistries(kekId, record.fingerprint, 'destroying');
      await registry.transition(kekId, 'destroyed', client);
      await registry.record(client, kekId, 'destroyed', 'restore window ended', 'rekey');
      let done: DestroyOutcome;
      try {
        done = await this.driver.destroy(kekId, await registry.list());
      } catch (err) {
        if (!(err instanceof OperatorMustActError)) throw err;
        done = { destroyed: false, detail: err.instruction };
      }
      return {
        outcome: 'destroyed',
        // What the operator removes by hand must not be needed elsewhere: say what rekey could and could not see.
        detail: done.destroyed
          ? done.detail
          : `${done.detail}. ${checked}: make sure none of them reads it before you remove it`,
        ...(!done.destroyed && { operatorMustRemove: true as const }),
        ...(proof.relabelled > 0 && { proof }),
      };
    });
  }
}
