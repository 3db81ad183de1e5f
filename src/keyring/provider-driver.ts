// Today's key stores (src/keys/*, each a KeyProvider with optional members) as store drivers: every hook required,
// a store rekey may not write answering what the operator must do. The bridge that lets the keyring own the
// lifecycle of every store now; the stores move into one driver file each under src/keyring/drivers/.
import type { RowCrypto } from '../crypto/row-crypto';
import { KmsKeys } from '../keys/aws-kms';
import { EnvKeyProvider } from '../keys/env-provider';
import type { KeyProvider } from '../keys/key-provider';
import { KmsWithLocalKeys } from '../keys/kms-move-in';
import { MyceliumTokenSecrets } from '../keys/mycelium-token-secret';
import { VaultTransitKeys } from '../keys/vault-transit';
import { LocalCipher, RemoteCipher, type DekCipher, type RemoteKeyStore } from './cipher';
import type { DestroyOutcome, ProvisionOptions, RecordedKek, StoreDriver, StoredKek } from './driver';
import { OperatorMustActError } from '../errors';

/** What the operator does for each step of a store rekey may not write. */
interface Instructions {
  provision(kekId: string): string;
  promote(from: string, to: string): string;
  retire(kekId: string): string;
  restore(kekId: string): string;
  destroy(kekId: string): string;
  owners: string;
  claim: string;
}

const KEY_RECIPE = "32 random bytes as base64url: openssl rand -base64 32 | tr '+/' '-_' | tr -d '='";

function environmentInstructions(prefix: string): Instructions {
  const variable = (kekId: string) => `${prefix}_KEK_${kekId}`;
  const everywhere = 'in every worker, admin API and application process';
  return {
    provision: (kekId) => `set ${variable(kekId)} (${KEY_RECIPE}) ${everywhere}`,
    promote: (_from, to) =>
      `set ${prefix}_CURRENT_KEK_ID=${to} ${everywhere} that reads it (the registry names '${to}' active already)`,
    retire: (kekId) =>
      `keep ${variable(kekId)} set until its restore window ends: rekey says when to remove it once it is destroyed`,
    restore: (kekId) => `set ${variable(kekId)} again ${everywhere}, to the key the registry recorded`,
    destroy: (kekId) =>
      `rekey cannot remove an environment variable: remove ${variable(kekId)} from every worker, admin API and application process (and from wherever their environment is kept: compose files, secrets, CI)`,
    owners: `the environment records no owner: give each keyspace variables of its own prefix`,
    claim: 'the environment names its keys itself: nothing to claim',
  };
}

function myceliumInstructions(description: string): Instructions {
  return {
    provision: (kekId) =>
      `rekey cannot make a token_secret for KEK '${kekId}': give the gateway its new token_secret and set the current secret of ${description} to it (the one before in the old secret)`,
    promote: (_from, to) => `the gateway must use the new token_secret (KEK '${to}') as its current one`,
    retire: (kekId) =>
      `keep the old token_secret (KEK '${kekId}') until its restore window ends: rekey says when to remove it once it is destroyed`,
    restore: (kekId) => `put the old token_secret (KEK '${kekId}') back where ${description} reads it`,
    destroy: (kekId) =>
      `rekey cannot remove a token_secret: remove the old token_secret (KEK '${kekId}') from where ${description} reads it`,
    owners: `Mycelium's token secrets record no owner: give each keyspace secrets of its own`,
    claim: "Mycelium's token secrets carry no names: nothing to claim",
  };
}

function genericInstructions(description: string): Instructions {
  return {
    provision: (kekId) => `add KEK '${kekId}' to ${description} yourself`,
    promote: (_from, to) => `make KEK '${to}' the current one of ${description}`,
    retire: (kekId) => `keep KEK '${kekId}' in ${description} until its restore window ends`,
    restore: (kekId) => `put KEK '${kekId}' back into ${description}, the key the registry recorded`,
    destroy: (kekId) => `remove KEK '${kekId}' from ${description}`,
    owners: `${description} records no owner: give each keyspace a store of its own`,
    claim: `${description}: nothing to claim`,
  };
}

function instructionsFor(provider: KeyProvider): Instructions {
  if (provider instanceof EnvKeyProvider) return environmentInstructions(provider.prefix);
  if (provider instanceof MyceliumTokenSecrets) return myceliumInstructions(provider.description);
  return genericInstructions(provider.description);
}

/** The remote store of a provider whose KEKs never leave it, when `kekId`'s key is there. */
function remoteOf(provider: KeyProvider, kekId: string): RemoteKeyStore | undefined {
  if (provider instanceof KmsKeys || provider instanceof VaultTransitKeys) return provider.remote();
  if (provider instanceof KmsWithLocalKeys) return provider.inKms(kekId) ? provider.kms.remote() : undefined;
  return undefined;
}

/**
 * A KeyProvider as a store driver. `rows`: the worker's crypto for local keys (its threads), asked for only when rows
 * are rewrapped or checked.
 */
export function providerDriver(source: KeyProvider | (() => KeyProvider), rows: () => RowCrypto): StoreDriver {
  if (typeof source !== 'function') return driverOver(source, rows);
  // Opened when first used: a registry-only step (an unknown KEK's restore) never reads the store.
  let opened: StoreDriver | undefined;
  const driver = () => (opened ??= driverOver(source(), rows));
  return {
    get description() {
      return driver().description;
    },
    get configuredCurrent() {
      return driver().configuredCurrent;
    },
    reload: () => driver().reload(),
    list: () => driver().list(),
    ownerOf: (kekId) => driver().ownerOf(kekId),
    adopt: (keyspace) => driver().adopt(keyspace),
    provision: (kekId, options) => driver().provision(kekId, options),
    claim: (provisioning, registry) => driver().claim(provisioning, registry),
    promote: (from, to, registry) => driver().promote(from, to, registry),
    retire: (kekId, registry) => driver().retire(kekId, registry),
    restore: (kekId, registry) => driver().restore(kekId, registry),
    destroy: (kekId, registry) => driver().destroy(kekId, registry),
    cipher: (kek) => driver().cipher(kek),
    close: () => opened?.close(),
  };
}

function driverOver(provider: KeyProvider, rows: () => RowCrypto): StoreDriver {
  // A store rekey may not write: it makes no KEKs (the environment, Mycelium's token secrets).
  const readOnly = provider.generate === undefined;
  const instructions = instructionsFor(provider);
  const operator = (instruction: string) => new OperatorMustActError(provider.description, instruction);
  const holds = (fingerprint: string) => provider.held().some((k) => k.fingerprint === fingerprint);

  return {
    get description() {
      return provider.description;
    },
    get configuredCurrent() {
      return provider instanceof MyceliumTokenSecrets ? undefined : provider.configuredCurrentKekId;
    },
    reload: () => provider.reload(),

    list(): Promise<StoredKek[]> {
      if (provider instanceof MyceliumTokenSecrets) return Promise.resolve(provider.slots());
      return Promise.resolve(
        provider.held().map(({ kekId, fingerprint }) => ({ ...(kekId !== undefined && { kekId }), fingerprint })),
      );
    },

    ownerOf: async (kekId: string) => provider.owners?.ownerOf(kekId),

    async adopt(keyspace: string): Promise<void> {
      if (!provider.owners) throw operator(instructions.owners);
      await provider.owners.adopt(keyspace);
    },

    async provision(kekId: string, options: ProvisionOptions): Promise<void> {
      if (!provider.generate) throw operator(instructions.provision(kekId));
      await provider.generate(kekId, options);
    },

    async claim(provisioning: string, registry: readonly RecordedKek[]): Promise<void> {
      if (readOnly) throw operator(instructions.claim);
      await provider.claim?.(provisioning, registry);
    },

    async promote(from: string, to: string, registry: readonly RecordedKek[]): Promise<void> {
      if (readOnly) throw operator(instructions.promote(from, to));
      // A store that keeps no mark of its own (the keyring file): the registry's is the record.
      await provider.promote?.(from, to, registry);
    },

    async retire(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
      if (readOnly) throw operator(instructions.retire(kekId));
      await provider.retire?.(kekId, registry);
    },

    async restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
      if (readOnly) throw operator(instructions.restore(kekId));
      const recorded = registry.find((k) => k.kekId === kekId);
      // A store whose retire leaves the key readable cannot bring back one it no longer holds.
      if (!provider.restoresUnreadable && recorded !== undefined && !holds(recorded.fingerprint)) {
        throw operator(instructions.restore(kekId));
      }
      await provider.restore?.(kekId, registry);
    },

    async destroy(kekId: string, registry: readonly RecordedKek[]): Promise<DestroyOutcome> {
      if (!provider.destroy) throw operator(instructions.destroy(kekId));
      const done = await provider.destroy(kekId, registry);
      if (!done.destroyed) throw operator(done.detail);
      return done;
    },

    cipher(kek: { kekId: string; fingerprint: string }): DekCipher | undefined {
      const remote = remoteOf(provider, kek.kekId);
      if (remote !== undefined) return holds(kek.fingerprint) ? new RemoteCipher(remote, kek) : undefined;
      const key = provider.copyByFingerprint(kek.fingerprint);
      return key && new LocalCipher(kek.kekId, kek.fingerprint, key, provider.description, rows);
    },

    close: () => provider.close(),
  };
}
