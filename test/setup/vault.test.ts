import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { portToTry } from '../../src/dev/ports';
import { startVault, vaultRequest, type VaultServer } from '../../src/dev/vault';

interface KvRead {
  data: { data: Record<string, string>; metadata: { version: number } };
}
interface KvWrite {
  data: { version: number };
}
interface TransitAnswer {
  data: { ciphertext?: string; plaintext?: string };
}

const b64 = (text: string) => Buffer.from(text).toString('base64');

describe('Vault built by the setup from its Go module source', () => {
  let vault: VaultServer;

  beforeAll(async () => {
    vault = await startVault(inject('toolchain').vault);
  });
  afterAll(async () => {
    await vault?.stop();
  });

  it('is Vault 1.19.5, unsealed, and answers only its own random root token', async () => {
    const status = await fetch(`${vault.address}/v1/sys/seal-status`).then((r) => r.json() as Promise<object>);
    expect(status).toMatchObject({ sealed: false, initialized: true, version: '1.19.5' });
    const self = await vaultRequest<{ data: { policies: string[] } }>(vault, 'GET', 'auth/token/lookup-self');
    expect(self.data.policies).toEqual(['root']);
    const stranger = await fetch(`${vault.address}/v1/auth/token/lookup-self`, {
      headers: { 'X-Vault-Token': 'root' },
    });
    expect(stranger.status).toBe(403);
    expect(vault.env).toEqual({ VAULT_ADDR: vault.address, VAULT_TOKEN: vault.rootToken });
  });

  it('serves KV v2 at secret/: each write is a new version, and every version reads back', async () => {
    const secret = `secret/data/rekey/${randomUUID()}`;
    const first = await vaultRequest<KvWrite>(vault, 'POST', secret, { data: { value: 'first' } });
    const second = await vaultRequest<KvWrite>(vault, 'POST', secret, { data: { value: 'second' } });
    expect([first.data.version, second.data.version]).toEqual([1, 2]);

    const latest = await vaultRequest<KvRead>(vault, 'GET', secret);
    expect(latest.data).toMatchObject({ data: { value: 'second' }, metadata: { version: 2 } });
    const older = await vaultRequest<KvRead>(vault, 'GET', `${secret}?version=1`);
    expect(older.data).toMatchObject({ data: { value: 'first' }, metadata: { version: 1 } });
  });

  it('serves Transit: a ciphertext rewrapped after a rotation names the new key version and decrypts to the same plaintext', async () => {
    const key = `rekey-${randomUUID()}`;
    await vaultRequest(vault, 'POST', `transit/keys/${key}`, { type: 'aes256-gcm96' });
    const plaintext = b64('a data encryption key, 32 bytes.');

    const encrypted = await vaultRequest<TransitAnswer>(vault, 'POST', `transit/encrypt/${key}`, { plaintext });
    expect(encrypted.data.ciphertext).toMatch(/^vault:v1:/);
    await vaultRequest(vault, 'POST', `transit/keys/${key}/rotate`);
    const rewrapped = await vaultRequest<TransitAnswer>(vault, 'POST', `transit/rewrap/${key}`, {
      ciphertext: encrypted.data.ciphertext,
    });
    expect(rewrapped.data.ciphertext).toMatch(/^vault:v2:/);

    for (const ciphertext of [encrypted.data.ciphertext, rewrapped.data.ciphertext]) {
      const decrypted = await vaultRequest<TransitAnswer>(vault, 'POST', `transit/decrypt/${key}`, { ciphertext });
      expect(decrypted.data.plaintext).toBe(plaintext);
    }
  });
});

describe('startVault', () => {
  it('starts on another port when the one it tried is taken, and stop() frees the port it listened on', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const taken = (blocker.address() as net.AddressInfo).port;
    const tried: number[] = [];
    try {
      const vault = await startVault(inject('toolchain').vault, {
        nextPort: () => {
          const port = tried.length === 0 ? taken : portToTry();
          tried.push(port);
          return port;
        },
      });
      const port = Number(new URL(vault.address).port);
      expect(tried).toEqual([taken, port]);
      expect((await fetch(`${vault.address}/v1/sys/health`)).status).toBe(200);

      await vault.stop();
      const again = net.createServer();
      await new Promise<void>((resolve, reject) => {
        again.once('error', reject);
        again.listen(port, '127.0.0.1', resolve);
      });
      again.close();
    } finally {
      blocker.close();
    }
  });
});
