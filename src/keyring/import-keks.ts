// `rekey keys import`: KEKs held in environment variables (REKEY_KEK_<id>, TALOS_KEK_<id>) moved into a keyring file
// or an AWS Secrets Manager secret, byte for byte. A KEK is trusted by its fingerprint, which is the bytes', so the
// registry's records hold and nothing needs rotating. Nothing is overwritten: a store that holds another key under one
// of the ids (or one of the keys under another id) refuses the whole import before anything is written; a store that
// takes no key bytes refuses at its first write (its driver's importKek), before anything is written too.
import type { StoreDriver, StoredKek } from './driver';
import { KekFingerprintMismatchError, KeyMaterialError } from '../errors';

export interface ImportedKek {
  kekId: string;
  fingerprint: string;
  outcome: 'imported' | 'already there';
  current: boolean;
}

/** The keys a store holds under a name, by name (as last read). */
async function named(store: StoreDriver): Promise<Map<string, StoredKek>> {
  return new Map((await store.list()).flatMap((k) => (k.kekId === undefined ? [] : [[k.kekId, k] as const])));
}

/**
 * Every KEK `source` holds, into `destination`, the current one first (a new Secrets Manager secret's first version
 * is AWSCURRENT). Checked in full before the first write; each key's fingerprint in the destination is checked after.
 */
export async function importKeks(source: StoreDriver, destination: StoreDriver): Promise<ImportedKek[]> {
  const current = source.configuredCurrent;
  const held = [...(await named(source)).values()]
    .map(({ kekId, fingerprint }) => ({ kekId: kekId!, fingerprint }))
    .sort((a, b) => Number(b.kekId === current) - Number(a.kekId === current) || a.kekId.localeCompare(b.kekId));
  await destination.reload();
  const there = await destination.list();
  const thereByName = await named(destination);
  for (const { kekId, fingerprint } of held) {
    const same = thereByName.get(kekId);
    if (same !== undefined && same.fingerprint !== fingerprint) {
      throw new KekFingerprintMismatchError(
        kekId,
        same.fingerprint,
        fingerprint,
        `${destination.description} holds another key under '${kekId}' (${same.fingerprint}) than ${source.description} (${fingerprint}): it is never overwritten, and nothing was imported; find out which key the rows under '${kekId}' need before going on`,
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
    // The source's cipher holds a copy of the key, zeroized on release.
    const cipher = source.cipher({ kekId, fingerprint });
    if (!cipher) throw new KeyMaterialError(`${source.description} no longer holds '${kekId}'`, source.description);
    try {
      const outcome = await destination.importKek(kekId, cipher.rowKek().key, { current: kekId === current });
      imported.push({
        kekId,
        fingerprint,
        outcome: outcome === 'added' ? 'imported' : 'already there',
        current: kekId === current,
      });
    } finally {
      cipher.release();
    }
  }
  await destination.reload();
  const after = await named(destination);
  for (const { kekId, fingerprint } of held) {
    if (after.get(kekId)?.fingerprint !== fingerprint) {
      throw new KeyMaterialError(
        `${destination.description}: '${kekId}' does not read back with fingerprint ${fingerprint} after the import`,
        destination.description,
      );
    }
  }
  return imported;
}
