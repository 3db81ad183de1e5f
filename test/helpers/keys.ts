import { randomBytes } from 'node:crypto';
import { EnvKeyProvider } from '../../src/keyring/drivers/env';

/** Fresh random KEKs through the real env provider (prefix TEST), and their encodings for leak scans. */
export function createTestKeys(
  ids: string[],
  current = ids[0],
): { provider: EnvKeyProvider; secrets: string[]; env: Record<string, string> } {
  const env: Record<string, string> = { REKEY_ENV_PREFIX: 'TEST' };
  const secrets: string[] = [];
  for (const id of ids) {
    const key = randomBytes(32);
    env[`TEST_KEK_${id}`] = key.toString('base64url');
    secrets.push(key.toString('base64url'), key.toString('base64'), key.toString('hex'));
  }
  if (current) env.TEST_CURRENT_KEK_ID = current;
  return { provider: new EnvKeyProvider(env, 'TEST'), secrets, env };
}

export function testKeys(ids: string[], current = ids[0]): EnvKeyProvider {
  return createTestKeys(ids, current).provider;
}
