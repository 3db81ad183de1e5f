import { randomBytes } from 'node:crypto';
import { EnvKeyProvider } from '../../src/keys/env-provider';

/** A key provider over fresh random KEKs, through the real env provider (prefix TEST). */
export function testKeys(ids: string[], current = ids[0]): EnvKeyProvider {
  const env: NodeJS.ProcessEnv = {};
  for (const id of ids) env[`TEST_KEK_${id}`] = randomBytes(32).toString('base64url');
  if (current) env.TEST_CURRENT_KEK_ID = current;
  return new EnvKeyProvider(env, 'TEST');
}
