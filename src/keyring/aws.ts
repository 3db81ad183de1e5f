// What rekey's AWS clients share: region, endpoint and credentials from the environment rekey is given, retries that
// ride out throttling, and the translation of the AWS errors a retry cannot fix into rekey's own.
import { KeyMaterialError } from '../errors';

/** The AWS region from AWS_REGION, else AWS_DEFAULT_REGION (as the AWS CLI and boto3 read it). */
export function awsRegion(env: NodeJS.ProcessEnv): string | undefined {
  return env.AWS_REGION?.trim() || env.AWS_DEFAULT_REGION?.trim() || undefined;
}

/** How many times a throttled or failed AWS call is tried, with the SDK's backoff between (AWS_MAX_ATTEMPTS). */
const DEFAULT_MAX_ATTEMPTS = 10;

/** How long one AWS call may take, connection included, before it fails and is retried (REKEY_AWS_TIMEOUT). */
const DEFAULT_TIMEOUT_SECONDS = 60;

/**
 * The client settings for one service: region (required), the endpoint from AWS_ENDPOINT_URL_<SERVICE> or
 * AWS_ENDPOINT_URL (moto, LocalStack, a VPC endpoint), and credentials from this environment when it carries them,
 * else the SDK's default chain (instance role, SSO, shared files).
 */
export function awsClientConfig(env: NodeJS.ProcessEnv, service: 'SECRETS_MANAGER' | 'KMS') {
  const region = awsRegion(env);
  if (!region) {
    throw new KeyMaterialError(
      'AWS_REGION (or AWS_DEFAULT_REGION) must name the region of the key store, e.g. us-east-1',
      'AWS_REGION',
    );
  }
  const endpoint = env[`AWS_ENDPOINT_URL_${service}`]?.trim() || env.AWS_ENDPOINT_URL?.trim() || undefined;
  const attempts = Number(env.AWS_MAX_ATTEMPTS ?? DEFAULT_MAX_ATTEMPTS);
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 100) {
    throw new KeyMaterialError(
      `AWS_MAX_ATTEMPTS must be a whole number from 1 to 100, got '${env.AWS_MAX_ATTEMPTS}'`,
      'AWS_MAX_ATTEMPTS',
    );
  }
  // The SDK waits for ever for an answer by default: a call a network device swallowed would hold a locked step's
  // transaction (and the KEK's registry row) until the worker dies. Bounded, it fails and is retried.
  const rawTimeout = env.REKEY_AWS_TIMEOUT?.trim();
  const seconds = rawTimeout ? Number(rawTimeout.replace(/s$/, '')) : DEFAULT_TIMEOUT_SECONDS;
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 3600) {
    throw new KeyMaterialError(
      `REKEY_AWS_TIMEOUT must be a number of seconds from 1 to 3600, got '${rawTimeout}'`,
      'REKEY_AWS_TIMEOUT',
    );
  }
  const accessKeyId = env.AWS_ACCESS_KEY_ID?.trim();
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY?.trim();
  return {
    region,
    maxAttempts: attempts,
    requestHandler: {
      connectionTimeout: seconds * 1000,
      requestTimeout: seconds * 1000,
      throwOnRequestTimeout: true,
    },
    ...(endpoint !== undefined && { endpoint }),
    ...(accessKeyId &&
      secretAccessKey && {
        credentials: {
          accessKeyId,
          secretAccessKey,
          ...(env.AWS_SESSION_TOKEN && { sessionToken: env.AWS_SESSION_TOKEN }),
        },
      }),
  };
}

/** The AWS error names that say the configuration or the permissions are wrong: no retry can fix them. */
const NOT_RETRYABLE = new Set([
  'AccessDeniedException',
  'UnrecognizedClientException',
  'InvalidClientTokenId',
  'ResourceNotFoundException',
  'NotFoundException',
  'InvalidRequestException',
  'InvalidParameterException',
  'ValidationException',
  'DisabledException',
  'KMSInvalidStateException',
  'InvalidKeyUsageException',
  'IncorrectKeyException',
  'InvalidCiphertextException',
]);

/**
 * Runs one AWS call; an error no retry can fix becomes a KeyMaterialError naming the store and the operation (and,
 * for a denial, the IAM action to grant), so the activity fails at once instead of retrying forever. Anything else
 * (throttling past the SDK's own retries, a network failure) is thrown as it is, and Temporal retries the activity,
 * as are the errors named in `callerHandles` (an answer about the data, not the call: KMS refusing a ciphertext).
 */
export async function awsCall<T>(
  where: string,
  action: string,
  call: () => Promise<T>,
  callerHandles?: ReadonlySet<string>,
): Promise<T> {
  try {
    return await call();
  } catch (err) {
    const name = (err as { name?: string }).name ?? '';
    if (name === 'TimeoutError') {
      // Retryable (Temporal tries the step again), but saying where and which setting bounds it.
      throw new Error(`${where}: ${action} got no answer in time (REKEY_AWS_TIMEOUT): ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (!NOT_RETRYABLE.has(name) || callerHandles?.has(name)) throw err;
    const hint =
      name === 'AccessDeniedException'
        ? `: grant ${action} on it to this process's role`
        : name === 'UnrecognizedClientException' || name === 'InvalidClientTokenId'
          ? ': the AWS credentials are not valid'
          : '';
    throw new KeyMaterialError(`${where}: ${action} failed with ${name}${hint} (${(err as Error).message})`, where);
  }
}

/** As awsCall, but a resource that does not exist (ResourceNotFoundException, NotFoundException) is `undefined`. */
export async function awsFind<T>(where: string, action: string, call: () => Promise<T>): Promise<T | undefined> {
  let missing = false;
  const result = await awsCall(where, action, () =>
    call().catch((err: unknown) => {
      const name = (err as { name?: string }).name;
      if (name !== 'ResourceNotFoundException' && name !== 'NotFoundException') throw err;
      missing = true;
      return undefined;
    }),
  );
  return missing ? undefined : result;
}
