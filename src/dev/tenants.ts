import { createHash, randomBytes } from 'node:crypto';
import type { Pool } from 'pg';
import { KEY_BYTES, WRAPPED_DEK_BYTES } from '../envelope/dek-wrapping';
import type { KeyProvider } from '../keys/key-provider';

export const tenantIdFor = (prefix: string, n: number) => `${prefix}${String(n).padStart(8, '0')}`;

/**
 * Creates `count` tenants with random DEKs wrapped by `kekId`, in chunks of one INSERT each (every wrapped DEK
 * of a chunk travels as one binary parameter).
 */
export async function seedTenants(options: {
  db: Pool;
  keys: KeyProvider;
  kekId: string;
  count: number;
  prefix?: string;
  chunk?: number;
}): Promise<void> {
  const { db, keys, kekId, count, prefix = 'tenant-', chunk = 10_000 } = options;
  for (let start = 0; start < count; start += chunk) {
    const n = Math.min(chunk, count - start);
    const ids: string[] = [];
    const wrapped = Buffer.allocUnsafe(n * WRAPPED_DEK_BYTES);
    const deks = randomBytes(n * KEY_BYTES);
    const nonces = randomBytes(n * 12);
    for (let i = 0; i < n; i++) {
      const id = tenantIdFor(prefix, start + i);
      ids.push(id);
      const dek = deks.subarray(i * KEY_BYTES, (i + 1) * KEY_BYTES);
      keys.wrapInto(wrapped, i * WRAPPED_DEK_BYTES, kekId, id, dek, nonces.subarray(i * 12, (i + 1) * 12));
    }
    deks.fill(0);
    await db.query(
      `INSERT INTO tenant_deks (tenant_id, kek_id, wrapped_dek)
       SELECT u.id, $2, substring($3::bytea FROM ((u.ord - 1) * ${WRAPPED_DEK_BYTES} + 1)::int FOR ${WRAPPED_DEK_BYTES})
       FROM unnest($1::text[]) WITH ORDINALITY AS u(id, ord)`,
      [ids, kekId, wrapped],
    );
  }
}

/**
 * A SHA-256 of every tenant's unwrapped DEK: equal maps before and after a rotation prove every DEK is
 * byte-identical. Throws if any DEK does not unwrap.
 */
export async function dekFingerprints(db: Pool, keys: KeyProvider): Promise<Map<string, string>> {
  const { rows } = await db.query<{ tenant_id: string; kek_id: string; wrapped_dek: Buffer }>(
    'SELECT tenant_id, kek_id, wrapped_dek FROM tenant_deks ORDER BY tenant_id',
  );
  const fingerprints = new Map<string, string>();
  for (const row of rows) {
    const dek = keys.unwrap(row.kek_id, row.tenant_id, row.wrapped_dek);
    fingerprints.set(row.tenant_id, createHash('sha256').update(dek).digest('hex'));
    dek.fill(0);
  }
  return fingerprints;
}
