// Which KMS keys under a keyspace's alias prefix its rotation may take as its own (issue 26's adversary finding on
// issue 24's finding 2). A key is this keyspace's when its tag `rekey:keyspace` names it, or when the keyspace's
// registry recorded its ARN (a key made before owner tags, which the registry has trusted since). A key under the prefix
// that carries no tag and that the registry does not record may be another deployment's (a KEK it made with an earlier
// `rekey keys generate`, which did not tag, or one made by hand): it is never taken silently. The operator claims it by
// name and ARN (`rekey keys claim`), an explicit act; until then the keyspace's rotation is refused at its first step.
import { KeyStoreRefusedError } from '../errors';

/** A key under the prefix as adopt reads it: the KEK its alias names, its ARN and its owner tag, if any. */
export interface PrefixKey {
  kekId: string;
  alias: string;
  arn: string;
  owner: string | undefined;
}

/**
 * What adopt does with the keys under the prefix: the untagged keys the registry recorded are tagged as `keyspace`'s;
 * an untagged key the registry does not record refuses the whole adoption before any tag is written. Keys tagged for
 * any keyspace are left as they are (the keyring refuses another keyspace's when a step would use it).
 */
export function adoption(
  keys: readonly PrefixKey[],
  keyspace: string,
  recordedArns: ReadonlySet<string>,
  prefix: string,
): { tag: PrefixKey[] } {
  const untagged = keys.filter((key) => key.owner === undefined);
  const unclaimed = untagged.filter((key) => !recordedArns.has(key.arn));
  if (unclaimed.length > 0) throw unclaimedKeys(unclaimed, keyspace, prefix);
  return { tag: untagged };
}

/** The refusal of keys no keyspace has claimed, with the command that claims each for this keyspace. */
export function unclaimedKeys(keys: readonly PrefixKey[], keyspace: string, prefix: string): KeyStoreRefusedError {
  const listed = keys.map((key) => `'${key.kekId}' (${key.alias}, ${key.arn})`).join(', ');
  const commands = keys.map((key) => `rekey keys claim ${key.kekId} --fingerprint kms:${key.arn}`).join('; ');
  return new KeyStoreRefusedError(
    `the alias prefix ${prefix} holds KMS key(s) ${listed} with no rekey:keyspace tag, which the registry of keyspace ${keyspace} does not record: ` +
      `another deployment may use them (a KEK made by an earlier rekey keys generate, which did not tag it, or made by hand), and rekey does not take them as this keyspace's, nor rotate beside them. ` +
      `If a key is this keyspace's KEK, claim it (with this keyspace's DATABASE_URL, and --target naming its target): ${commands}. ` +
      `If it is not, give this keyspace an alias prefix of its own (REKEY_AWS_KMS_ALIAS_PREFIX, e.g. alias/rekey/prod/)`,
  );
}
