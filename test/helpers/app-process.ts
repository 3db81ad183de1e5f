// An application instance as its own process, for tests: TenantCrypto over a file keyring it shares with a worker in
// another process (not the same provider object, as in the demo). It writes "ready" once started, then creates a
// tenant and reads every tenant it made, every 50 ms; on SIGTERM it prints what it did and exits.
//   DATABASE_URL, REKEY_KEYRING_FILE, APP_INSTANCE_ID
import { Pool } from 'pg';
import { FileKeyring } from '../../src/keyring/drivers/file';
import { TenantCrypto } from '../../src/tenant-crypto';

async function main(): Promise<void> {
  const db = new Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
  const keys = FileKeyring.open(process.env.REKEY_KEYRING_FILE!);
  const app = new TenantCrypto({
    db,
    keys,
    instanceId: process.env.APP_INSTANCE_ID,
    registryTtlMs: 200,
    warn: (message) => process.stderr.write(`app: ${message}\n`),
  });
  await app.start();
  const made = new Map<string, { plaintext: string; ciphertext: string }>();
  let errors = 0;
  let stopping = false;
  process.stdout.write('ready\n');
  process.on('SIGTERM', () => (stopping = true));
  while (!stopping) {
    try {
      const tenantId = `app-tenant-${made.size}`;
      const plaintext = `secret ${made.size}`;
      made.set(tenantId, { plaintext, ciphertext: await app.encrypt(tenantId, plaintext) });
      for (const [id, { plaintext: expected, ciphertext }] of made) {
        if ((await app.decrypt(id, ciphertext)).toString() !== expected) throw new Error(`${id} reads wrong`);
      }
    } catch (err) {
      errors++;
      process.stderr.write(`app: ${err instanceof Error ? err.message : String(err)}\n`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await app.stop();
  keys.close();
  await db.end();
  process.stdout.write(`${JSON.stringify({ tenants: made.size, errors })}\n`);
}

void main();
