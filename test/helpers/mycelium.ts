// A stand-in for Mycelium's database and gateway, written from ../shared/seed-systems.md with node:crypto alone: it
// shares no code with rekey's codecs, so a test that passes proves rekey reads and writes Mycelium's real formats.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Pool } from 'pg';
import { open, seal, uuidBytes as uuid } from './gcm';

export const SYSTEM_TENANT = '00000000-0000-0000-0000-000000000000';

/** KEK = SHA-256 of the token_secret UUID's 16 raw bytes. */
export function kekOf(tokenSecret: string): Buffer {
  return createHash('sha256')
    .update(Buffer.from(tokenSecret.replace(/-/g, ''), 'hex'))
    .digest();
}

/** A tenant's wrapped DEK: 'v2:' + base64(nonce ‖ ciphertext ‖ tag), bound to the tenant id's 16 bytes. */
export function wrapDek(kek: Buffer, tenantId: string, dek: Buffer): string {
  return `v2:${seal(kek, dek, uuid(tenantId)).toString('base64')}`;
}

export function unwrapDek(kek: Buffer, tenantId: string, stored: string): Buffer {
  if (!stored.startsWith('v2:')) throw new Error('not a v2 value');
  return open(kek, Buffer.from(stored.slice(3), 'base64'), uuid(tenantId));
}

/** A v2 data field: the same text layout under the tenant's DEK, bound to the tenant id's bytes and the field name. */
export function encryptField(dek: Buffer, tenantId: string, field: string, value: string): string {
  return `v2:${seal(dek, Buffer.from(value), Buffer.concat([uuid(tenantId), Buffer.from(field, 'ascii')])).toString('base64')}`;
}

export function decryptField(dek: Buffer, tenantId: string, field: string, stored: string): string {
  if (!stored.startsWith('v2:')) throw new Error('not a v2 value');
  const aad = Buffer.concat([uuid(tenantId), Buffer.from(field, 'ascii')]);
  return open(dek, Buffer.from(stored.slice(3), 'base64'), aad).toString();
}

/** A legacy v1 value: base64(nonce ‖ ciphertext ‖ tag) under the KEK itself, no prefix, empty associated data. */
export function encryptV1(kek: Buffer, value: string): string {
  return seal(kek, Buffer.from(value), Buffer.alloc(0)).toString('base64');
}

export function decryptV1(kek: Buffer, stored: string): string {
  return open(kek, Buffer.from(stored, 'base64'), Buffer.alloc(0)).toString();
}

/**
 * Mycelium's tables as its migrations leave them: `tenant` with its jsonb `meta`, and the envelope migration's
 * `encrypted_dek TEXT` (NULL until first needed) and `kek_version INTEGER NOT NULL DEFAULT 1`; `user.mfa` and
 * `webhook.secret`, the other encrypted fields.
 */
export async function createMyceliumSchema(db: Pool): Promise<void> {
  await db.query(`
    CREATE TABLE public.tenant (
      id uuid PRIMARY KEY,
      name text NOT NULL,
      meta jsonb NOT NULL DEFAULT '{}'::jsonb,
      created timestamptz NOT NULL DEFAULT now()
    );
    ALTER TABLE public.tenant ADD COLUMN encrypted_dek TEXT;
    ALTER TABLE public.tenant ADD COLUMN kek_version INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE public."user" (id uuid PRIMARY KEY, tenant_id uuid, email text NOT NULL, mfa jsonb);
    CREATE TABLE public.webhook (id uuid PRIMARY KEY, url text NOT NULL, secret jsonb);`);
}

/** The columns, indexes and triggers of Mycelium's tables: a rotation must leave them exactly as they were. */
export async function myceliumShape(db: Pool): Promise<string[]> {
  const { rows } = await db.query<{ line: string }>(`
    SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type AS line
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND NOT t.tgisinternal
    ORDER BY 1`);
  return rows.map((r) => r.line);
}

export interface SeededTenant {
  id: string;
  /** The DEK's bytes, or null for a tenant whose DEK is not provisioned yet. */
  dek: Buffer | null;
  /** Plaintext of `meta.telegram_bot_token`, encrypted under the DEK. */
  botToken?: string;
}

/** Inserts tenants whose DEK is wrapped by `wrapWith`, labelled `label`; or, with `wrapWith` null, none yet. */
export async function seedMyceliumTenants(
  db: Pool,
  count: number,
  wrapWith: Buffer | null,
  label: number,
): Promise<SeededTenant[]> {
  const tenants: SeededTenant[] = [];
  const rows: [string, string, string, string | null, number][] = [];
  for (let i = 0; i < count; i++) {
    const id = randomUUID();
    if (wrapWith === null) {
      tenants.push({ id, dek: null });
      rows.push([id, `tenant ${id}`, '{}', null, label]);
      continue;
    }
    const dek = randomBytes(32);
    const botToken = `${i}:bot-token-${randomBytes(8).toString('hex')}`;
    const meta = { telegram_bot_token: encryptField(dek, id, 'telegram_bot_token', botToken), locale: 'pt-BR' };
    tenants.push({ id, dek, botToken });
    rows.push([id, `tenant ${id}`, JSON.stringify(meta), wrapDek(wrapWith, id, dek), label]);
  }
  for (let i = 0; i < rows.length; i += 1_000) {
    const chunk = rows.slice(i, i + 1_000);
    await db.query(
      `INSERT INTO public.tenant (id, name, meta, encrypted_dek, kek_version)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[])`,
      [0, 1, 2, 3, 4].map((c) => chunk.map((r) => r[c])),
    );
  }
  return tenants;
}

/**
 * What the running gateway does meanwhile: it reads tenants' data and writes new bot tokens under their DEKs, and
 * onboards tenants whose DEK it provisions with its current token_secret, leaving kek_version at the column's
 * default 1 (Mycelium's own trap).
 */
export class MyceliumGateway {
  reads = 0;
  rewrites = 0;
  readonly onboarded: SeededTenant[] = [];
  readonly errors: string[] = [];
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly db: Pool,
    /** Every token_secret the gateway can resolve (current and old, as the guide asks during a rotation). */
    private readonly keks: Buffer[],
    private readonly currentKek: Buffer,
    private readonly tenants: SeededTenant[],
  ) {}

  private dekOf(id: string, stored: string): Buffer {
    for (const kek of this.keks) {
      try {
        return unwrapDek(kek, id, stored);
      } catch {
        // not this token_secret
      }
    }
    throw new Error(`the gateway cannot unwrap the DEK of tenant ${id}`);
  }

  start(options: { onboard: boolean }): void {
    this.running = true;
    const withDek = this.tenants.filter((t) => t.dek !== null);
    this.loop = (async () => {
      while (this.running) {
        const tenant = withDek[Math.floor(Math.random() * withDek.length)]!;
        try {
          const { rows } = await this.db.query<{ encrypted_dek: string; meta: { telegram_bot_token: string } }>(
            'SELECT encrypted_dek, meta FROM public.tenant WHERE id = $1',
            [tenant.id],
          );
          const dek = this.dekOf(tenant.id, rows[0]!.encrypted_dek);
          const token = decryptField(dek, tenant.id, 'telegram_bot_token', rows[0]!.meta.telegram_bot_token);
          if (token !== tenant.botToken) throw new Error(`tenant ${tenant.id} reads a bot token it never wrote`);
          this.reads++;
          if (this.reads % 3 === 0) {
            const fresh = `${this.reads}:rotated-${randomBytes(4).toString('hex')}`;
            await this.db.query(
              `UPDATE public.tenant SET meta = jsonb_set(meta, '{telegram_bot_token}', to_jsonb($2::text)) WHERE id = $1`,
              [tenant.id, encryptField(dek, tenant.id, 'telegram_bot_token', fresh)],
            );
            tenant.botToken = fresh;
            this.rewrites++;
          }
          if (options.onboard && this.reads % 10 === 0) {
            const id = randomUUID();
            const dek = randomBytes(32);
            const botToken = `new:${id}`;
            await this.db.query(`INSERT INTO public.tenant (id, name, meta, encrypted_dek) VALUES ($1, $2, $3, $4)`, [
              id,
              `onboarded ${id}`,
              { telegram_bot_token: encryptField(dek, id, 'telegram_bot_token', botToken) },
              wrapDek(this.currentKek, id, dek),
            ]);
            this.onboarded.push({ id, dek, botToken });
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

/**
 * With one token_secret alone: every DEK unwraps to the bytes it was given, every bot token decrypts to its last
 * value, and every tenant is labelled with `label`. Returns the problems found (none: []).
 */
export async function checkWithOneKek(
  db: Pool,
  kek: Buffer,
  label: number | number[],
  tenants: SeededTenant[],
): Promise<string[]> {
  const labels = Array.isArray(label) ? label : [label];
  const problems: string[] = [];
  const { rows } = await db.query<{
    id: string;
    encrypted_dek: string | null;
    kek_version: number;
    meta: { telegram_bot_token?: string };
  }>('SELECT id::text, encrypted_dek, kek_version, meta FROM public.tenant WHERE id = ANY($1::uuid[])', [
    tenants.map((t) => t.id),
  ]);
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const tenant of tenants) {
    const row = byId.get(tenant.id);
    if (!row) {
      problems.push(`${tenant.id}: row missing`);
      continue;
    }
    if (tenant.dek === null) {
      if (row.encrypted_dek !== null) problems.push(`${tenant.id}: gained a DEK`);
      continue;
    }
    if (!labels.includes(row.kek_version))
      problems.push(`${tenant.id}: labelled ${row.kek_version}, not ${labels.join(' or ')}`);
    try {
      const dek = unwrapDek(kek, tenant.id, row.encrypted_dek!);
      if (!dek.equals(tenant.dek)) problems.push(`${tenant.id}: DEK changed`);
      const token = decryptField(dek, tenant.id, 'telegram_bot_token', row.meta.telegram_bot_token!);
      if (token !== tenant.botToken) problems.push(`${tenant.id}: bot token changed`);
    } catch (err) {
      problems.push(`${tenant.id}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/** One encrypted value of Mycelium's inventory, as the fixture wrote it, and what it must read as. */
export interface InventoryValue {
  table: 'tenant' | 'user' | 'webhook';
  row: string;
  /** The jsonb column and the path inside it. */
  column: string;
  path: string[];
  /** The associated-data label of the field, and whose DEK the running gateway decrypts it with. */
  field: string;
  tenant: string;
  plaintext: string;
}

/** The stored text at a jsonb path of a row, read with plain SQL. */
export async function storedAt(db: Pool, value: InventoryValue): Promise<string | null> {
  const { rows } = await db.query<{ v: string | null }>(
    `SELECT ${value.column} #>> $2::text[] AS v FROM public."${value.table}" WHERE id = $1`,
    [value.row, value.path],
  );
  return rows[0]?.v ?? null;
}

/** How the running gateway reads a value: v2 under the DEK of `value.tenant` (unwrapped with `kek`), v1 under the KEK. */
export async function gatewayReads(db: Pool, kek: Buffer, value: InventoryValue): Promise<string> {
  const stored = await storedAt(db, value);
  if (stored === null)
    throw new Error(`${value.table}.${value.column} ${value.path.join('.')} of ${value.row}: no value`);
  if (!stored.startsWith('v2:')) return decryptV1(kek, stored);
  const { rows } = await db.query<{ encrypted_dek: string | null }>(
    'SELECT encrypted_dek FROM public.tenant WHERE id = $1',
    [value.tenant],
  );
  const wrapped = rows[0]?.encrypted_dek;
  if (!wrapped) throw new Error(`tenant ${value.tenant} has no DEK`);
  return decryptField(unwrapDek(kek, value.tenant, wrapped), value.tenant, value.field, stored);
}

/** A user whose TOTP secret is still v1 (under the KEK itself); the gateway reads it under the system DEK once v2. */
export async function insertLegacyTotpUser(
  db: Pool,
  kek: Buffer,
  email: string,
  secret: string,
): Promise<InventoryValue> {
  const id = randomUUID();
  await db.query(`INSERT INTO public."user" (id, email, mfa) VALUES ($1, $2, $3)`, [
    id,
    email,
    { totp: { enabled: { secret: encryptV1(kek, secret), issuer: 'mycelium' } } },
  ]);
  return {
    table: 'user',
    row: id,
    column: 'mfa',
    path: ['totp', 'enabled', 'secret'],
    field: 'totp_secret',
    tenant: SYSTEM_TENANT,
    plaintext: secret,
  };
}

/**
 * Mycelium before envelope encryption reached everything: v1 values in all four places of the inventory (TOTP
 * secrets in `user.mfa`, webhook secrets in `webhook.secret` under both holders, Telegram values in `tenant.meta`),
 * some already v2, tenants with and without a DEK, and the system tenant's row without one.
 */
export async function seedLegacyInventory(
  db: Pool,
  kek: Buffer,
  options: { tenants: number; users: number },
): Promise<{ values: InventoryValue[]; v2: InventoryValue[]; withoutDek: string[] }> {
  const values: InventoryValue[] = [];
  const v2: InventoryValue[] = [];
  const withoutDek: string[] = [];
  await db.query(`INSERT INTO public.tenant (id, name) VALUES ($1, 'system')`, [SYSTEM_TENANT]);
  for (let i = 0; i < options.tenants; i++) {
    const id = randomUUID();
    const hasDek = i % 3 !== 0;
    const dek = randomBytes(32);
    const bot = `bot-${i}-${randomBytes(4).toString('hex')}`;
    const hook = `hook-${i}-${randomBytes(4).toString('hex')}`;
    // Every fifth tenant with a DEK already has its bot token as v2.
    const botIsV2 = hasDek && i % 5 === 1;
    const meta = {
      telegram_bot_token: botIsV2 ? encryptField(dek, id, 'telegram_bot_token', bot) : encryptV1(kek, bot),
      telegram_webhook_secret: encryptV1(kek, hook),
      locale: 'pt-BR',
    };
    await db.query(`INSERT INTO public.tenant (id, name, meta, encrypted_dek) VALUES ($1, $2, $3, $4)`, [
      id,
      `tenant ${i}`,
      meta,
      hasDek ? wrapDek(kek, id, dek) : null,
    ]);
    if (!hasDek) withoutDek.push(id);
    const common = { table: 'tenant' as const, row: id, column: 'meta', tenant: id };
    (botIsV2 ? v2 : values).push({
      ...common,
      path: ['telegram_bot_token'],
      field: 'telegram_bot_token',
      plaintext: bot,
    });
    values.push({ ...common, path: ['telegram_webhook_secret'], field: 'telegram_webhook_secret', plaintext: hook });
  }
  for (let i = 0; i < options.users; i++) {
    values.push(await insertLegacyTotpUser(db, kek, `user${i}@example.com`, `JBSWY3DP${i}`));
  }
  await db.query(`INSERT INTO public."user" (id, email, mfa) VALUES ($1, 'nomfa@example.com', NULL)`, [randomUUID()]);
  for (const holder of ['authorizationHeader', 'queryParameter']) {
    const id = randomUUID();
    const token = `${holder}-${randomBytes(6).toString('hex')}`;
    await db.query(`INSERT INTO public.webhook (id, url, secret) VALUES ($1, 'https://example.com/hook', $2)`, [
      id,
      { [holder]: { name: 'X-Hook-Token', token: encryptV1(kek, token) } },
    ]);
    values.push({
      table: 'webhook',
      row: id,
      column: 'secret',
      path: [holder, 'token'],
      field: 'http_secret',
      tenant: SYSTEM_TENANT,
      plaintext: token,
    });
  }
  return { values, v2, withoutDek };
}
