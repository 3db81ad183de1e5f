// A slice on Vault Transit runs the `rewrap` requests of several batches in one window of
// REKEY_VAULT_TRANSIT_CONCURRENCY, as on KMS (kms-batch-tail.test.ts); against the real Vault dev server.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultRequest } from '../../src/dev/vault';
import { engineFor } from '../../src/dev/engine';
import { VaultTransitKeys } from '../../src/keyring/drivers/vault-transit';
import { generateKek } from '../../src/keyring/keyring';
import type { RowCrypto } from '../../src/crypto/row-crypto';
import { rewrapSlice } from '../../src/rewrap/rewrap-slice';
import { KekRegistry } from '../../src/store/kek-registry';
import { readProgress } from '../../src/store/rewrap-progress';
import { REKEY_PRESET } from '../../src/targets/presets';
import { useVaultAndDatabase } from '../helpers/vault';
import { fingerprintIn } from '../helpers/store-keys';

const TENANTS = 400;
/** The 0x03 form and the derivation context, written here from the README, not with rekey's codec. */
const contextOf = (tenantId: string) => Buffer.from(`rekey/transit-dek/v1\0${tenantId}`).toString('base64');

describe('a slice on Vault Transit runs the requests of several batches at once and writes them in order', () => {
  const servers = useVaultAndDatabase();

  it('every row is written once, in order, with its progress exact, while the requests of more than one batch are under way', async () => {
    const key = `rekey-${randomUUID()}`;
    const db = servers.db.pool;
    await db.query('TRUNCATE rekey.tenant_deks, rekey.kek_events, rekey.keks, rekey.rewrap_progress');
    // 5 rows a request: a batch of 20 rows is 4 requests, as many as REKEY_VAULT_TRANSIT_CONCURRENCY's slots, started
    // 50 ms apart (the pacer's rate): a slot freed by a batch's first request goes to the next batch's.
    const keys = VaultTransitKeys.fromEnv({
      ...servers.vault.env,
      REKEY_VAULT_TRANSIT_KEY: key,
      REKEY_VAULT_TRANSIT_RATE: '20',
      REKEY_VAULT_TRANSIT_BATCH: '5',
    });
    try {
      await generateKek(keys, 'v1');
      await new KekRegistry(db, REKEY_PRESET.name).seedActive('v1', await fingerprintIn(keys, 'v1'));
      const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
      const deks = new Map(ids.map((id) => [id, randomBytes(32)]));
      const encrypted = await vaultRequest<{ data: { batch_results: { ciphertext: string }[] } }>(
        servers.vault,
        'POST',
        `transit/encrypt/${key}`,
        {
          key_version: 1,
          batch_input: ids.map((id) => ({ plaintext: deks.get(id)!.toString('base64'), context: contextOf(id) })),
        },
      );
      const wrapped = encrypted.data.batch_results.map((r) =>
        Buffer.concat([Buffer.from([0x03]), Buffer.from(r.ciphertext)]),
      );
      await db.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
        [ids, wrapped],
      );
      // v2 only now: the DEKs above are under version 1, the latest then.
      await generateKek(keys, 'v2');
      const deps = await engineFor(db, REKEY_PRESET, keys);
      // The real Transit crypto, counting how many batches' requests run at once (every request is Vault's).
      const real = keys.rowCrypto();
      const seen = { running: 0, most: 0 };
      const crypto: RowCrypto = {
        threads: real.threads,
        pipeline: () => real.pipeline(),
        check: (...args) => real.check(...args),
        close: () => Promise.resolve(),
        async rewrap(...args) {
          seen.most = Math.max(seen.most, ++seen.running);
          try {
            return await real.rewrap(...args);
          } finally {
            seen.running--;
          }
        },
      };
      const cursors: string[] = [];
      const progressKey = 'transit-tail/pass-1/slice-0';
      const result = await rewrapSlice(
        { ...deps, crypto },
        { after: '', until: null, batchSize: 20, dryRun: false, progressKey },
        { onBatch: (checkpoint) => cursors.push(checkpoint.cursor) },
      );

      expect(result.done).toBe(true);
      expect(seen.most).toBeGreaterThan(1);
      // One request per 5 rows: no batch was sent twice.
      expect(result.counters).toMatchObject({
        rewrapped: TENANTS,
        casConflicts: 0,
        failed: 0,
        keyStoreRequests: TENANTS / 5,
      });
      expect((await readProgress(db, progressKey))?.counters).toMatchObject({ rewrapped: TENANTS, casConflicts: 0 });
      expect(cursors.filter((c, i) => i > 0 && c < cursors[i - 1]!)).toEqual([]);
      // Every row is on v2 (its ciphertext names version 2) and opens to the DEK it had, with its tenant's context.
      const { rows } = await db.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
        'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
      );
      expect(
        rows.filter((r) => r.kek_id !== 'v2' || !r.wrapped_dek.subarray(1).toString().startsWith('vault:v2:')),
      ).toEqual([]);
      const decrypted = await vaultRequest<{ data: { batch_results: { plaintext?: string }[] } }>(
        servers.vault,
        'POST',
        `transit/decrypt/${key}`,
        {
          batch_input: rows.map((r) => ({
            ciphertext: r.wrapped_dek.subarray(1).toString(),
            context: contextOf(r.tenant_id),
          })),
        },
      );
      const differ = rows.filter(
        (r, i) =>
          !Buffer.from(decrypted.data.batch_results[i]!.plaintext ?? '', 'base64').equals(deks.get(r.tenant_id)!),
      );
      expect(differ).toEqual([]);
    } finally {
      keys.close();
    }
  });
});
