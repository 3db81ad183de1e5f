import type { RowCrypto } from '../crypto/row-crypto';
import { engineView, type DekCipher, type EngineKek } from '../keyring/cipher';
import type { TargetRuntime } from '../targets/runtime';
import type { ProofKeys } from '../rewrap/still-on';
import type { KekRecord } from '../store/kek-registry';
import { RetireRefusedError } from '../errors';

/**
 * Runs `use` with the KEKs of a rotation as the rewrap engine takes them and the crypto their rows go through, from
 * the target keyring's ciphers (each checked against the fingerprint the registry recorded), and releases the ciphers
 * afterwards, whatever happens: their key bytes are zeroized. `local`: the caller's crypto threads for key bytes.
 */
export async function withKeks<T>(
  runtime: TargetRuntime,
  rotation: { from: string; to: string },
  kekIds: string[],
  local: RowCrypto | undefined,
  use: (keks: EngineKek[], crypto: RowCrypto) => Promise<T>,
): Promise<T> {
  runtime.keyring.nameRotation(rotation.from, rotation.to);
  return runtime.keyring.withCiphers(kekIds, (ciphers) => {
    const { keks, crypto } = engineView(ciphers, local);
    return use(keks, crypto);
  });
}

/**
 * Runs `use` with the KEKs a proof of the rows labelled `label` tries (see ProofKeys): the active KEK, then every
 * decrypt-only KEK this process holds, each checked against the registry's fingerprint; and `label`'s own KEK while
 * the registry lets it unwrap; and the crypto their rows go through. Releases every cipher afterwards. No active KEK:
 * nothing may take the rows.
 */
export async function withProofKeys<T>(
  runtime: TargetRuntime,
  label: string,
  local: RowCrypto | undefined,
  use: (keys: ProofKeys, crypto: RowCrypto) => Promise<T>,
): Promise<T> {
  const { keyring, registry, definition } = runtime;
  await keyring.reload();
  const records = await registry.list();
  const active = records.find((r) => r.state === 'active');
  if (!active || active.kekId === label) {
    throw new RetireRefusedError(
      `target '${definition.name}' has no active KEK other than '${label}': no KEK can take the rows labelled with it`,
    );
  }
  // By the registry's fingerprints: a KEK this process does not hold (or not as registered) proves nothing here.
  const ciphers: DekCipher[] = [];
  const held = async (record: KekRecord): Promise<DekCipher | undefined> => {
    try {
      const cipher = await keyring.cipher(record.kekId);
      ciphers.push(cipher);
      return cipher;
    } catch {
      return undefined; // not held here, or not the registered key: rows under it are not proved by it
    }
  };
  try {
    ciphers.push(await keyring.cipher(active.kekId));
    const others: DekCipher[] = [];
    for (const record of records.filter((r) => r.state === 'decrypt_only' && r.kekId !== label)) {
      const cipher = await held(record);
      if (cipher) others.push(cipher);
    }
    const own = records.find((r) => r.kekId === label && r.state === 'decrypt_only');
    const labelCipher = own && (await held(own));
    // Keys held here that the registry does not record: a row that opens under one is not under `label`'s key (its
    // fingerprint is not `label`'s). Only the proof of the rows not labelled `label` tries them; they move nothing.
    const labelFingerprint = records.find((r) => r.kekId === label)?.fingerprint;
    const recorded = new Set(records.flatMap((r) => [r.kekId, r.fingerprint]));
    const unrecorded: DekCipher[] = [];
    for (const key of await keyring.held()) {
      if (recorded.has(key.kekId) || recorded.has(key.fingerprint) || key.fingerprint === labelFingerprint) continue;
      if (unrecorded.some((c) => c.fingerprint === key.fingerprint)) continue;
      try {
        const cipher = await keyring.cipher(key.kekId);
        ciphers.push(cipher);
        if (cipher.fingerprint === labelFingerprint) continue;
        unrecorded.push(cipher);
      } catch {
        // not usable here: rows under it are not proved by it
      }
    }
    const { keks, crypto } = engineView(ciphers, local);
    const kekOf = (cipher: DekCipher) => keks[ciphers.indexOf(cipher)]!;
    return await use(
      {
        label,
        active: kekOf(ciphers[0]!),
        others: others.map(kekOf),
        ...(labelCipher && { labelKek: kekOf(labelCipher) }),
        ...(unrecorded.length > 0 && { unrecorded: unrecorded.map(kekOf) }),
      },
      crypto,
    );
  } finally {
    for (const cipher of ciphers) cipher.release();
  }
}
