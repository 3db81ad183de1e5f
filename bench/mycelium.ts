// A Mycelium-format `tenant` table for the benchmark, seeded with COPY: 'v2:' + base64(nonce ‖ ciphertext ‖ tag)
// under SHA-256 of a token_secret UUID, bound to the tenant UUID's bytes (../shared/seed-systems.md). Written with
// node:crypto alone, not with rekey's codecs.
import { createCipheriv, createDecipheriv, createHash, randomBytes, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';

export function myceliumKek(tokenSecret: string): Buffer {
  return createHash('sha256')
    .update(Buffer.from(tokenSecret.replace(/-/g, ''), 'hex'))
    .digest();
}

/** A tenant UUID's 16 raw bytes (Mycelium's associated data). */
export const uuidBytes = (id: string) => Buffer.from(id.replace(/-/g, ''), 'hex');

/** base64(nonce ‖ ciphertext ‖ tag), AES-256-GCM with a random 12-byte nonce; no associated data when none is given. */
export function seal(key: Buffer, plaintext: Buffer, aad?: Buffer): string {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  if (aad) cipher.setAAD(aad);
  return Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]).toString('base64');
}

/** The reverse of seal. */
export function open(key: Buffer, sealed: string, aad?: Buffer): Buffer {
  const bytes = Buffer.from(sealed, 'base64');
  const decipher = createDecipheriv('aes-256-gcm', key, bytes.subarray(0, 12));
  if (aad) decipher.setAAD(aad);
  decipher.setAuthTag(bytes.subarray(bytes.length - 16));
  return Buffer.concat([decipher.update(bytes.subarray(12, bytes.length - 16)), decipher.final()]);
}

/**
 * `order: 'random'` (random UUIDs, as Mycelium makes them: keys in no relation to where rows lie) or 'sequential'
 * (UUIDs that grow with insertion, as rekey's own benchmark ids do): the same format, two layouts.
 */
export async function seedMyceliumTable(
  db: Pool,
  count: number,
  tokenSecret: string,
  order: 'random' | 'sequential' = 'random',
): Promise<void> {
  await db.query(`
    CREATE TABLE public.tenant (id uuid PRIMARY KEY, name text NOT NULL, meta jsonb NOT NULL DEFAULT '{}'::jsonb);
    ALTER TABLE public.tenant ADD COLUMN encrypted_dek TEXT;
    ALTER TABLE public.tenant ADD COLUMN kek_version INTEGER NOT NULL DEFAULT 1;
    -- The rest of Mycelium's encryption inventory, empty here: the preset's fields live there.
    CREATE TABLE public."user" (id uuid PRIMARY KEY, email text NOT NULL, mfa jsonb);
    CREATE TABLE public.webhook (id uuid PRIMARY KEY, url text NOT NULL, secret jsonb);`);
  const kek = myceliumKek(tokenSecret);
  const client = await db.connect();
  try {
    const sink = client.query(copyFrom('COPY public.tenant (id, name, encrypted_dek, kek_version) FROM STDIN'));
    await pipeline(Readable.from(chunks()), sink);
  } finally {
    client.release();
  }
  await db.query('VACUUM ANALYZE public.tenant');

  function* chunks(): Generator<string> {
    for (let start = 0; start < count; start += 10_000) {
      const lines: string[] = [];
      for (let i = start; i < Math.min(count, start + 10_000); i++) {
        const id =
          order === 'random'
            ? randomUUID()
            : `${i.toString(16).padStart(8, '0')}-0000-4000-8000-${randomBytes(6).toString('hex')}`;
        lines.push(`${id}\ttenant ${i}\tv2:${seal(kek, randomBytes(32), uuidBytes(id))}\t1\n`);
      }
      yield lines.join('');
    }
  }
}
