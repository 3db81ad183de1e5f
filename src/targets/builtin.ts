/** The built-in target: rekey's own `rekey.tenant_deks`, written by the TenantCrypto application API. */
export const BUILTIN_TARGET = 'rekey';
