// Adversary of a slice's rewrap on a remote key store (issue 27's batch tail, quota7): the calls of several batches
// run at once while their writes stay in order, so a batch's rows can be read, and their ReEncrypt answered, long
// before its compare-and-swap. A row the application wrote in between must not be overwritten with the rewrap of the
// value it replaced, and each row counted once. Against moto, through the throttling proxy (calls of batches overlap).
import { randomUUID } from 'node:crypto';
import { DecryptCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import type { RowCrypto } from '../../src/crypto/row-crypto';
import { engineFor } from '../../src/dev/engine';
import { awsClientConfig } from '../../src/keyring/aws';
import { KmsKeys } from '../../src/keyring/drivers/aws-kms';
import { generateKek, storedKek } from '../../src/keyring/keyring';
import { rewrapSlice } from '../../src/rewrap/rewrap-slice';
import { KekRegistry } from '../../src/store/kek-registry';
import { readProgress } from '../../src/store/rewrap-progress';
import { REKEY_PRESET } from '../../src/targets/presets';
import { throttlingProxy, useMoto } from '../helpers/aws';
import { createTestDatabase } from '../helpers/database';

const TENANTS = 200;
const BATCH = 20;
const contextFor = (tenantId: string, kekId: string) => ({ 'rekey:tenant': tenantId, 'rekey:kek': kekId });

describe('adversary7: a KMS slice whose batches are read ahead of their writes', () => {
  const moto = useMoto();

  it('a DEK the application replaced after its batch was read and re-encrypted, before that batch was written, is kept: the compare-and-swap refuses the stale value, and every other row is moved and counted once', async () => {
    const db = await createTestDatabase();
    const prefix = `alias/rekey-adv7/${randomUUID()}/`;
    const settings = { ...moto.server.env, REKEY_AWS_KMS_ALIAS_PREFIX: prefix };
    const client = new KMSClient(awsClientConfig(moto.server.env, 'KMS'));
    const proxy = await throttlingProxy(moto.server.endpoint, 4);
    const admin = KmsKeys.fromEnv(settings);
    const keys = KmsKeys.fromEnv({ ...settings, REKEY_AWS_KMS_RATE: '0', AWS_ENDPOINT_URL: proxy.endpoint });
    try {
      await generateKek(admin, 'v1');
      await generateKek(admin, 'v2');
      await new KekRegistry(db.pool, REKEY_PRESET.name).seedActive('v1', (await storedKek(admin, 'v1')).fingerprint);
      const generate = async (id: string, kekId: string) => {
        const made = await client.send(
          new GenerateDataKeyCommand({
            KeyId: `${prefix}kek-${kekId}`,
            KeySpec: 'AES_256',
            EncryptionContext: contextFor(id, kekId),
          }),
        );
        return {
          dek: Buffer.from(made.Plaintext!),
          wrapped: Buffer.concat([Buffer.from([0x02]), made.CiphertextBlob!]),
        };
      };
      const ids = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(5, '0')}`);
      const deks = new Map<string, Buffer>();
      const wrapped: Buffer[] = [];
      for (const id of ids) {
        const made = await generate(id, 'v1');
        deks.set(id, made.dek);
        wrapped.push(made.wrapped);
      }
      await db.pool.query(
        `INSERT INTO rekey.tenant_deks (tenant_id, kek_id, wrapped_dek) SELECT t, 'v1', w FROM unnest($1::text[], $2::bytea[]) AS u(t, w)`,
        [ids, wrapped],
      );
      await keys.reload();
      const deps = await engineFor(db.pool, REKEY_PRESET, keys);

      // The fourth batch's rows: once their ReEncrypt calls have all answered (its write is still to come, after the
      // batches before it), the application gives one of them a new DEK under the active KEK v2.
      const victim = ids[3 * BATCH + 5]!;
      const real = keys.rowCrypto();
      let replaced: Buffer | undefined;
      // The worker's own KMS crypto (its pipeline too, where the build has one), its rewrap watched.
      const crypto = Object.create(real) as RowCrypto;
      crypto.rewrap = async (codec, from, to, rows, options) => {
        const result = await real.rewrap(codec, from, to, rows, options);
        if (replaced === undefined && rows.some((row) => row.$id === victim)) {
          const made = await generate(victim, 'v2');
          await db.pool.query(`UPDATE rekey.tenant_deks SET kek_id = 'v2', wrapped_dek = $2 WHERE tenant_id = $1`, [
            victim,
            made.wrapped,
          ]);
          replaced = made.dek;
        }
        return result;
      };
      const key = 'adv7/pass-1/slice-0';
      const result = await rewrapSlice(
        { ...deps, crypto },
        { after: '', until: null, batchSize: BATCH, dryRun: false, progressKey: key },
      );
      expect(result.done).toBe(true);
      expect(replaced).toBeDefined();
      expect(proxy.throttled).toBeGreaterThan(0);

      // Every row labelled v2 and opening, under v2's context, to its DEK: the victim to the application's new one.
      const { rows } = await db.pool.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
        'SELECT tenant_id, kek_id, wrapped_dek FROM rekey.tenant_deks ORDER BY tenant_id',
      );
      const wrong: string[] = [];
      for (const row of rows) {
        const opened = await client.send(
          new DecryptCommand({
            CiphertextBlob: row.wrapped_dek.subarray(1),
            EncryptionContext: contextFor(row.tenant_id, row.kek_id),
          }),
        );
        const expected = row.tenant_id === victim ? replaced! : deks.get(row.tenant_id)!;
        if (row.kek_id !== 'v2' || !Buffer.from(opened.Plaintext!).equals(expected)) wrong.push(row.tenant_id);
      }
      expect(wrong).toEqual([]);
      // Each row the slice moved counted once; the victim was not moved by it.
      expect(result.counters.rewrapped).toBe(TENANTS - 1);
      expect((await readProgress(db.pool, key))?.counters.rewrapped).toBe(TENANTS - 1);
    } finally {
      admin.close();
      keys.close();
      client.destroy();
      await proxy.close();
      await db.drop();
    }
  }, 240_000);
});
