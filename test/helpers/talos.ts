// A stand-in for the Talos gateway's database and its secrets, written from ../shared/seed-systems.md with node:crypto
// alone: it shares no code with rekey's codecs.
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import type { Pool } from 'pg';

const b64u = (bytes: Buffer) => bytes.toString('base64url');
const fromB64u = (text: string) => Buffer.from(text, 'base64url');

/** The associated data of a secret: `talos.secret.v1:<id>`; older rows are bound to their name instead. */
export const v1Binding = (id: string) => Buffer.from(`talos.secret.v1:${id}`, 'utf8');

export interface StoredSecret {
  ciphertext: string;
  nonce: string;
  tag: string;
  aad: string | null;
}

/** Encrypts a secret directly with a KEK, as Talos writes it (v1 binding, stored in `aad`), or bound to its name. */
export function encryptSecret(
  kek: Buffer,
  id: string,
  name: string,
  value: Buffer,
  bindTo: 'v1' | 'name',
): StoredSecret {
  const aad = bindTo === 'v1' ? v1Binding(id) : Buffer.from(name, 'utf8');
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, nonce);
  cipher.setAAD(aad);
  const ciphertext = Buffer.concat([cipher.update(value), cipher.final()]);
  return {
    ciphertext: b64u(ciphertext),
    nonce: b64u(nonce),
    tag: b64u(cipher.getAuthTag()),
    aad: bindTo === 'v1' ? b64u(aad) : null,
  };
}

/** As Talos's reader does: the v1 binding first, then the name. */
export function decryptSecret(kek: Buffer, id: string, name: string, stored: StoredSecret): Buffer {
  let lastError: unknown;
  for (const aad of [v1Binding(id), Buffer.from(name, 'utf8')]) {
    try {
      const decipher = createDecipheriv('aes-256-gcm', kek, fromB64u(stored.nonce));
      decipher.setAAD(aad);
      decipher.setAuthTag(fromB64u(stored.tag));
      return Buffer.concat([decipher.update(fromB64u(stored.ciphertext)), decipher.final()]);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

export async function createTalosSchema(db: Pool): Promise<void> {
  await db.query(`
    CREATE TABLE public.secrets (
      id varchar(36) PRIMARY KEY,
      name varchar(255) NOT NULL UNIQUE,
      ciphertext text NOT NULL,
      nonce varchar(64) NOT NULL,
      tag varchar(64) NOT NULL,
      aad text,
      key_id varchar(64) NOT NULL,
      version integer NOT NULL DEFAULT 1,
      created_at timestamptz NOT NULL DEFAULT now(),
      rotated_at timestamptz,
      updated_at timestamptz NOT NULL DEFAULT now()
    )`);
}

export interface SeededSecret {
  id: string;
  name: string;
  /** What the secret holds now (the gateway rewrites some). */
  value: Buffer;
}

/** Secrets of varied lengths (0 to 4 KiB) on `kekId`, bound as asked. */
export async function seedSecrets(
  db: Pool,
  kek: Buffer,
  kekId: string,
  count: number,
  bindTo: 'v1' | 'name',
): Promise<SeededSecret[]> {
  const secrets: SeededSecret[] = [];
  for (let i = 0; i < count; i++) {
    const id = randomUUID();
    const name = `${kekId}-${bindTo}-${i}-${id.slice(0, 8)}`;
    const value = randomBytes([0, 1, 16, 32, 57, 300, 4096][i % 7]!);
    const stored = encryptSecret(kek, id, name, value, bindTo);
    await db.query(
      `INSERT INTO public.secrets (id, name, ciphertext, nonce, tag, aad, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
      [id, name, stored.ciphertext, stored.nonce, stored.tag, stored.aad, kekId],
    );
    secrets.push({ id, name, value });
  }
  return secrets;
}

/**
 * The Talos gateway after its restart with TALOS_CURRENT_KEK_ID set: it reads secrets with whichever KEK their key_id
 * names, creates new ones under the current KEK, and updates secrets, as its own code does (v1 binding, key_id,
 * version + 1, updated_at). `updates` says which secrets it may update.
 */
export class TalosGateway {
  reads = 0;
  writes = 0;
  readonly created: SeededSecret[] = [];
  readonly errors: string[] = [];
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly db: Pool,
    private readonly keks: Record<string, Buffer>,
    private readonly current: string,
    private readonly readable: SeededSecret[],
    private readonly updates: SeededSecret[],
  ) {}

  start(options: { create: boolean }): void {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        try {
          const secret = this.readable[Math.floor(Math.random() * this.readable.length)]!;
          const { rows } = await this.db.query<StoredSecret & { key_id: string }>(
            'SELECT ciphertext, nonce, tag, aad, key_id FROM public.secrets WHERE id = $1',
            [secret.id],
          );
          const value = decryptSecret(this.keks[rows[0]!.key_id]!, secret.id, secret.name, rows[0]!);
          if (!value.equals(secret.value)) throw new Error(`secret ${secret.name} reads a value it never held`);
          this.reads++;
          if (this.reads % 4 === 0 && this.updates.length > 0) {
            const target = this.updates[Math.floor(Math.random() * this.updates.length)]!;
            const fresh = randomBytes(40);
            const stored = encryptSecret(this.keks[this.current]!, target.id, target.name, fresh, 'v1');
            await this.db.query(
              `UPDATE public.secrets SET ciphertext = $2, nonce = $3, tag = $4, aad = $5, key_id = $6,
                 version = version + 1, updated_at = now() WHERE id = $1`,
              [target.id, stored.ciphertext, stored.nonce, stored.tag, stored.aad, this.current],
            );
            target.value = fresh;
            this.writes++;
          }
          if (options.create && this.reads % 7 === 0) {
            const id = randomUUID();
            const name = `created-${id}`;
            const value = randomBytes(24);
            const stored = encryptSecret(this.keks[this.current]!, id, name, value, 'v1');
            await this.db.query(
              `INSERT INTO public.secrets (id, name, ciphertext, nonce, tag, aad, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
              [id, name, stored.ciphertext, stored.nonce, stored.tag, stored.aad, this.current],
            );
            this.created.push({ id, name, value });
          }
        } catch (err) {
          this.errors.push((err as Error).message);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

/** With one KEK alone: every secret decrypts to what it holds, on key_id `kekId`, v1-bound. Problems found, or []. */
export async function checkSecrets(db: Pool, kek: Buffer, kekId: string, secrets: SeededSecret[]): Promise<string[]> {
  const problems: string[] = [];
  const { rows } = await db.query<StoredSecret & { id: string; key_id: string }>(
    'SELECT id, ciphertext, nonce, tag, aad, key_id FROM public.secrets WHERE id = ANY($1::text[])',
    [secrets.map((s) => s.id)],
  );
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const secret of secrets) {
    const row = byId.get(secret.id);
    if (!row) {
      problems.push(`${secret.name}: missing`);
      continue;
    }
    if (row.key_id !== kekId) problems.push(`${secret.name}: on ${row.key_id}, not ${kekId}`);
    try {
      if (!decryptSecret(kek, secret.id, secret.name, row).equals(secret.value))
        problems.push(`${secret.name}: changed`);
    } catch {
      problems.push(`${secret.name}: does not decrypt`);
    }
  }
  return problems;
}
