// Adversary of `rekey keys generate` and `rekey keys import` (issue 26: every caller onto the keyring, whose provision
// refuses a store another keyspace owns before anything is written: test/adversary/provision-foreign-store). The two
// commands write into the store themselves: `keys generate` calls the driver's provision with no owner check for a
// Vault KV or Secrets Manager secret, and `keys import` writes key bytes into whatever secret REKEY_AWS_SECRET_ID
// names. An operator of keyspace A whose configuration names keyspace B's secret by mistake puts a key B's registry
// never recorded into B's store; in Vault KV it becomes the secret's latest version, the one DevSkyy's application
// reads and wraps every new DEK with. Against the real Vault, moto and PostgreSQL, through the built CLI.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { secretsManagerSecretOwnedBy, useMoto } from '../helpers/aws';
import { runRekey } from '../helpers/cli';
import { keyspaceIn } from '../helpers/keyspace';
import { useVaultAndDatabases, vaultSecretOwnedBy } from '../helpers/vault';

describe('adversary: rekey keys generate and keys import into a store another keyspace owns', () => {
  const servers = useVaultAndDatabases(4);
  const moto = useMoto();

  /** The CLI's environment: exactly what the operator of keyspace A sets (DATABASE_URL names A's database). */
  const cliEnv = (env: NodeJS.ProcessEnv, databaseUrl: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    ...env,
    DATABASE_URL: databaseUrl,
  });

  it("rekey keys generate into keyspace B's Vault KV secret is refused (exit 5) before anything is written: no new version, no new name, B's latest version is still B's active KEK", async () => {
    const [dbA, dbB] = [servers.db(0), servers.db(1)];
    const keyspaceB = (await keyspaceIn(dbB.pool)).id;
    const { env, storeB, metadata } = await vaultSecretOwnedBy(servers.vault, dbB.pool, keyspaceB, {
      REKEY_KEY_PROVIDER: 'vault',
    });
    const before = await metadata();
    expect(before.custom_metadata['rekey:keyspace']).toBe(keyspaceB);

    const generated = await runRekey(['keys', 'generate', '--id', 'v2'], cliEnv(env, dbA.url));
    expect(generated.code, generated.stdout + generated.stderr).toBe(5);
    expect(generated.stderr).toContain(keyspaceB);

    const after = await metadata();
    expect(after.current_version).toBe(before.current_version);
    expect(after.custom_metadata).toEqual(before.custom_metadata);
    storeB.close();
  });

  it("rekey keys generate into keyspace B's Secrets Manager secret is refused (exit 5) before anything is written: B's secret gets no new version", async () => {
    const dbA = servers.db(0);
    const secret = await secretsManagerSecretOwnedBy(moto.server, servers.db(2).pool);
    const { env, keyspaceB, versions } = secret;
    const before = await versions();

    const generated = await runRekey(['keys', 'generate', '--id', 'v2'], cliEnv(env, dbA.url));
    expect(generated.code, generated.stdout + generated.stderr).toBe(5);
    expect(generated.stderr).toContain(keyspaceB);

    expect((await versions()).sort()).toEqual(before.sort());
    secret.close();
  });

  it("rekey keys import into keyspace B's Secrets Manager secret is refused (exit 5) before anything is written: B's secret gets none of A's keys", async () => {
    const dbA = servers.db(0);
    const secret = await secretsManagerSecretOwnedBy(moto.server, servers.db(3).pool);
    const { env, keyspaceB, versions } = secret;
    const before = await versions();

    // Keyspace A's keys, in its environment: v7 is its current KEK (no id B's secret holds).
    const imported = await runRekey(
      ['keys', 'import'],
      cliEnv(
        {
          ...env,
          REKEY_KEK_v7: randomBytes(32).toString('base64url'),
          REKEY_KEK_v8: randomBytes(32).toString('base64url'),
          REKEY_CURRENT_KEK_ID: 'v8',
        },
        dbA.url,
      ),
    );
    expect(imported.code, imported.stdout + imported.stderr).toBe(5);
    expect(imported.stderr).toContain(keyspaceB);

    expect((await versions()).sort()).toEqual(before.sort());
    secret.close();
  });
});
