// `rekey keys import`: KEKs held in environment variables (REKEY_KEK_<id>, TALOS_KEK_<id>) moved into a keyring file
// or an AWS Secrets Manager secret, byte for byte. A KEK is trusted by its fingerprint, which is the bytes', so the
// registry's records hold and nothing needs rotating. Nothing is overwritten: a store that holds another key under one
// of the ids (or one of the keys under another id) refuses the whole import before anything is written.
import type { KeyProvider } from './key-provider';
import { KekFingerprintMismatchError, KeyMaterialError } from '../errors';

/** A store a KEK's bytes can be written into under an id: the keyring file, Secrets Manager. */
export interface KekImporter extends KeyProvider {
  /**
   * Adds the key under `kekId` unless the store holds it already (then 'present'); `current`: the store names it as
   * current if it names none yet. Refuses a different key under the same id.
   */
  importKek(kekId: string, key: Buffer, options: { current: boolean }): Promise<'added' | 'present'>;
}

export function canImport(store: KeyProvider): store is KekImporter {
  return typeof (store as Partial<KekImporter>).importKek === 'function';
}

export interface ImportedKek {
  kekId: string;
  fingerprint: string;
  outcome: 'imported' | 'already there';
  current: boolean;
}

/**
 * Every KEK `source` holds, into `destination`, the current one first (a new Secrets Manager secret's first version
 * is AWSCURRENT). Checked in full before the first write; each key's fingerprint in the destination is checked after.
 */
export async function importKeks(source: KeyProvider, destination: KekImporter): Promise<ImportedKek[]> {
  const current = source.configuredCurrentKekId;
  const held = source
    .kekIds()
    .map((kekId) => ({ kekId, fingerprint: source.fingerprint(kekId) }))
    .sort((a, b) => Number(b.kekId === current) - Number(a.kekId === current) || a.kekId.localeCompare(b.kekId));
  await destination.reload();
  const there = destination.held();
  for (const { kekId, fingerprint } of held) {
    if (destination.has(kekId) && destination.fingerprint(kekId) !== fingerprint) {
      const there = destination.fingerprint(kekId);
      throw new KekFingerprintMismatchError(
        kekId,
        there,
        fingerprint,
        `${destination.description} holds another key under '${kekId}' (${there}) than ${source.description} (${fingerprint}): it is never overwritten, and nothing was imported; find out which key the rows under '${kekId}' need before going on`,
      );
    }
    const elsewhere = there.find((k) => k.fingerprint === fingerprint && k.kekId !== kekId);
    if (elsewhere) {
      throw new KeyMaterialError(
        `${destination.description} already holds the key of '${kekId}' (${fingerprint}) as '${elsewhere.kekId ?? 'unnamed'}': one key has one id; nothing was imported`,
        destination.description,
      );
    }
  }
  const imported: ImportedKek[] = [];
  for (const { kekId, fingerprint } of held) {
    const key = source.copyByFingerprint(fingerprint);
    if (!key) throw new KeyMaterialError(`${source.description} no longer holds '${kekId}'`, source.description);
    try {
      const outcome = await destination.importKek(kekId, key, { current: kekId === current });
      imported.push({
        kekId,
        fingerprint,
        outcome: outcome === 'added' ? 'imported' : 'already there',
        current: kekId === current,
      });
    } finally {
      key.fill(0);
    }
  }
  await destination.reload();
  for (const { kekId, fingerprint } of held) {
    if (!destination.has(kekId) || destination.fingerprint(kekId) !== fingerprint) {
      throw new KeyMaterialError(
        `${destination.description}: '${kekId}' does not read back with fingerprint ${fingerprint} after the import`,
        destination.description,
      );
    }
  }
  return imported;
}
