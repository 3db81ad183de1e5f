// Adversary of the keyring seam (issue 26): "keys are trusted by fingerprint, not by name". The keyring uses a KEK by
// its registered fingerprint wherever the store holds it (Keyring.cipher, resolveKek), but Keyring.destroy hands the
// KEK's id to the driver, and the keyring file removes whatever entry has that id. A file whose entry 'v1' holds the
// active KEK's bytes (an operator rebuilt the file from a backup and named the keys again) loses the active key to
// the destruction of the retired v1. Against PostgreSQL and a real keyring file.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekFingerprintMismatchError } from '../../src/errors';
import { useScratchDirectory, useTestDatabase } from '../helpers/database';
import {
  keyringFor,
  nothingNeeded,
  retiredWindowEnded,
  rotatedOn,
  TEST_KEYSPACE as KEYSPACE,
} from '../helpers/keyring';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: a destruction acts on the key the registry recorded, never on whatever the id names now', () => {
  const db = useTestDatabase();
  const scratch = useScratchDirectory('rekey-adversary-');

  it("the keyring file: destroying retired v1 is refused when the file's entry 'v1' holds another key (the active v2's), and v2's DEKs still open", async () => {
    const file = path.join(scratch.dir, 'keyring.json');
    const store = FileKeyring.open(file, { create: true });
    await generateKek(store, 'v1');
    await generateKek(store, 'v2');
    const registry = await rotatedOn(db.pool, store);
    await retiredWindowEnded(db.pool, registry);

    // The file rebuilt by hand: the active key's bytes under the id 'v1', v2's own entry gone. rekey still serves v2
    // by its fingerprint, so nothing looks wrong.
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { keks: { id: string }[]; current?: string };
    const v2Entry = parsed.keks.find((k) => k.id === 'v2')!;
    fs.writeFileSync(file, JSON.stringify({ ...parsed, current: 'v1', keks: [{ ...v2Entry, id: 'v1' }] }, null, 2));

    const keyring = keyringFor(db.pool, store, KEYSPACE);
    await keyring.reload();
    const v2 = await keyring.cipher('v2');
    const { dek, wrapped } = await v2.newDek('tenant-1');
    v2.release();

    await expect(keyring.destroy('v1', { prove: nothingNeeded, reopenForMs: 0 })).rejects.toThrow(
      KekFingerprintMismatchError,
    );

    expect((await registry.require('v1')).state).toBe('retired');
    await keyring.reload();
    const again = await keyring.cipher('v2');
    const opened = await again.open('tenant-1', wrapped);
    expect(opened.equals(dek)).toBe(true);
    again.release();
    for (const buffer of [dek, opened]) buffer.fill(0);
    keyring.close();
  });
});
