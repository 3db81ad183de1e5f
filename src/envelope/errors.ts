// One class per failure mode. Temporal turns an error thrown by an activity into an ApplicationFailure whose
// type is the class name, so these names go straight into `nonRetryableErrorTypes`.

/** Key material that is malformed or missing: an env variable, a keyring file. A retry cannot fix it. */
export class KeyMaterialError extends Error {
  override readonly name = 'KeyMaterialError';
  constructor(
    message: string,
    readonly source: string,
  ) {
    super(message);
  }
}

/** A KEK id that the key provider or the registry does not know. */
export class UnknownKekError extends Error {
  override readonly name = 'UnknownKekError';
  constructor(
    readonly kekId: string,
    where: string,
  ) {
    super(`KEK '${kekId}' is not known to ${where}`);
  }
}

/** A wrapped DEK that does not unwrap: tampered, copied from another tenant, relabelled, or corrupt. */
export class DekUnwrapError extends Error {
  override readonly name = 'DekUnwrapError';
  constructor(
    readonly tenantId: string,
    readonly kekId: string,
    readonly reason: string,
  ) {
    super(`DEK of tenant '${tenantId}' does not unwrap with KEK '${kekId}': ${reason}`);
  }
}

/** Tenant data that does not decrypt with the tenant's DEK. */
export class CiphertextError extends Error {
  override readonly name = 'CiphertextError';
  constructor(
    readonly tenantId: string,
    reason: string,
  ) {
    super(`ciphertext of tenant '${tenantId}' does not decrypt: ${reason}`);
  }
}

/** A KEK state change that the lifecycle forbids (e.g. anything out of `retired`). */
export class KekTransitionError extends Error {
  override readonly name = 'KekTransitionError';
  constructor(
    readonly kekId: string,
    readonly from: string,
    readonly to: string,
    reason: string,
  ) {
    super(`KEK '${kekId}' cannot go from ${from} to ${to}: ${reason}`);
  }
}

/** The registry and the key provider disagree about a KEK (same id, different key). */
export class KekFingerprintMismatchError extends Error {
  override readonly name = 'KekFingerprintMismatchError';
  constructor(
    readonly kekId: string,
    readonly registered: string,
    readonly provided: string,
  ) {
    super(
      `KEK '${kekId}' in the key provider has fingerprint ${provided}, but the registry recorded ${registered}: this is a different key`,
    );
  }
}

/** The registry knows a KEK by its fingerprint, and this process holds no key with that fingerprint. */
export class KekNotHeldError extends Error {
  override readonly name = 'KekNotHeldError';
  constructor(
    readonly kekId: string,
    readonly fingerprint: string,
    where: string,
  ) {
    super(`KEK '${kekId}' (${fingerprint} in the registry) is not in ${where}: add that key here, not another one`);
  }
}
