import { randomUUID } from 'node:crypto';
import { DescribeSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { Pool } from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { startMoto, type MotoServer } from '../../src/dev/moto';
import { awsClientConfig } from '../../src/keyring/aws';
import { SecretsManagerKeys } from '../../src/keyring/drivers/aws-secrets-manager';
import { KekRegistry } from '../../src/store/kek-registry';
import { createTestDatabase, type TestDatabase } from './database';
import { useFileServer } from './file-server';
import { keyspaceIn } from './keyspace';
import { useTimeSkippingEnv } from './temporal';
import { fingerprintIn } from './store-keys';
import { generateKek } from '../../src/keyring/keyring';

// The throttling proxy needs no test runner: the chaos suite (bench/chaos-targets.ts) uses it too.
export { throttlingProxy } from './throttling-proxy';

/** One moto server (AWS Secrets Manager and KMS) for the calling test file, stopped after its last test. */
export function useMoto(): { readonly server: MotoServer } {
  return useFileServer(() => startMoto(inject('toolchain').motoServer), 'moto');
}

/**
 * What a test file against AWS needs: a moto server, a time-skipping Temporal server and a test database, with an SDK
 * client to moto made by `client` (destroyed after the last test, the database dropped).
 */
export function useAwsServers<C extends { destroy(): void }>(
  client: (env: NodeJS.ProcessEnv) => C,
): {
  readonly moto: { readonly server: MotoServer };
  readonly temporal: { readonly env: TestWorkflowEnvironment };
  readonly db: TestDatabase;
  readonly client: C;
} {
  const moto = useMoto();
  const temporal = useTimeSkippingEnv();
  let db: TestDatabase | undefined;
  let made: C | undefined;
  beforeAll(async () => {
    db = await createTestDatabase();
    made = client(moto.server.env);
  });
  afterAll(async () => {
    made?.destroy();
    await db?.drop();
  });
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the AWS test servers are only available inside tests');
    return value;
  };
  return {
    moto,
    temporal,
    get db() {
      return ready(db);
    },
    get client() {
      return ready(made);
    },
  };
}

/**
 * Makes `client` lose the answer to the first call of `operation` (e.g. 'CreateKey') after AWS carried it out, as a
 * dropped connection does: the caller sees an error, the service has done the work. Returns how many were lost.
 */
export function loseFirstAnswer(
  client: { middlewareStack: { add: (...args: never[]) => void } },
  operation: string,
): { readonly lost: number } {
  let lost = 0;
  const add = client.middlewareStack.add as unknown as (
    middleware: (
      next: (args: unknown) => Promise<unknown>,
      context: { commandName?: string },
    ) => (args: unknown) => Promise<unknown>,
    options: { step: string; name: string },
  ) => void;
  add.call(
    client.middlewareStack,
    (next, context) => async (args) => {
      const result = await next(args);
      if (context.commandName === `${operation}Command` && lost === 0) {
        lost++;
        throw new Error(`socket hang up (the answer to ${operation} was lost; AWS carried it out)`);
      }
      return result;
    },
    { step: 'initialize', name: 'loseOneAnswer' },
  );
  return {
    get lost() {
      return lost;
    },
  };
}

/**
 * Keyspace B's Secrets Manager secret in moto, at an id of its own: `storeB` made v1 there with B (the keyspace of
 * `dbB`) as its owner, and B's registry has v1 active. `env` names the secret as a misconfigured keyspace A would;
 * `versions` lists the secret's version ids as Secrets Manager has them; `close` closes the store and the client.
 */
export async function secretsManagerSecretOwnedBy(
  moto: MotoServer,
  dbB: Pool,
): Promise<{
  keyspaceB: string;
  env: Record<string, string>;
  storeB: SecretsManagerKeys;
  versions: () => Promise<string[]>;
  close: () => void;
}> {
  const secretId = `rekey/${randomUUID()}`;
  const env = { ...moto.env, REKEY_KEY_PROVIDER: 'aws-secrets-manager', REKEY_AWS_SECRET_ID: secretId };
  const keyspaceB = (await keyspaceIn(dbB)).id;
  const storeB = SecretsManagerKeys.fromEnv(env);
  await generateKek(storeB, 'v1', { owner: keyspaceB });
  await new KekRegistry(dbB, 'rekey').seedActive('v1', await fingerprintIn(storeB, 'v1'));
  const client = new SecretsManagerClient(awsClientConfig(moto.env, 'SECRETS_MANAGER'));
  const versions = async () =>
    Object.keys((await client.send(new DescribeSecretCommand({ SecretId: secretId }))).VersionIdsToStages ?? {});
  return {
    keyspaceB,
    env,
    storeB,
    versions,
    close: () => {
      storeB.close();
      client.destroy();
    },
  };
}
