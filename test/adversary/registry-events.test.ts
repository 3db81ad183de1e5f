// Adversary of the keyring seam (issue 26: "the keyring owns provision, promote, retire, restore and destroy, each ...
// writing the registry and its event before calling a required hook of the store driver"). Restore and destroy write
// their event (rekey.kek_events); promote and retire change the registry with none, so the audit trail of a KEK that
// a store then disabled (KMS), soft-deleted (Vault KV) or stopped (Transit) does not say when or by which step.
// Against PostgreSQL and a real keyring file.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { KekRegistry } from '../../src/store/kek-registry';
import { useScratchDirectory, useTestDatabase } from '../helpers/database';
import { keyringFor, nothingNeeded } from '../helpers/keyring';
import { fingerprintIn } from '../helpers/store-keys';
import { generateKek } from '../../src/keyring/keyring';

describe('adversary: every registry step of the keyring writes its event', () => {
  const db = useTestDatabase();
  const scratch = useScratchDirectory('rekey-adversary-');

  it('promote and retire write an event each (rekey.kek_events), as restore and destroy do: a retired KEK’s trail says it was retired', async () => {
    const store = FileKeyring.open(path.join(scratch.dir, 'keyring.json'), { create: true });
    await generateKek(store, 'v1');
    const registry = new KekRegistry(db.pool, 'rekey');
    await registry.seedActive('v1', await fingerprintIn(store, 'v1'));
    const keyring = keyringFor(db.pool, store, 'db-a/public.tenant_deks');
    await keyring.provision('v2', { generate: true });
    await keyring.promote('v1', 'v2');
    await keyring.retire('v1', { restoreWindowMs: 60_000, prove: nothingNeeded });

    expect((await registry.require('v1')).state).toBe('retired');
    const v1Events = (await registry.events('v1')).map((e) => e.event as string);
    const v2Events = (await registry.events('v2')).map((e) => e.event as string);
    expect(v1Events).toContain('retired');
    expect(v2Events.length).toBeGreaterThan(0);
    keyring.close();
  });
});
