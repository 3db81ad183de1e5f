// The formats rekey knows, each written in the one description of src/codec/sealed-format.ts.
// Facts for Mycelium and Talos: ../shared/seed-systems.md (read from their code).
import type { SealedFormat } from './sealed-format';

/**
 * rekey's own wrapped DEK (`rekey.tenant_deks.wrapped_dek`): bytea `0x01 ‖ nonce ‖ ciphertext ‖ tag`, bound to the
 * tenant and the KEK id, each length-prefixed, after a fixed label; or, for KEKs in AWS KMS, `0x02 ‖ blob` with the
 * encryption context {rekey:tenant, rekey:kek}; or, for KEKs in Vault Transit, `0x03 ‖ 'vault:v<n>:…'` under a key
 * derived from the tenant.
 */
export const REKEY_DEK_FORMAT: SealedFormat = {
  value: { kind: 'combined', column: 'wrapped_dek', encoding: 'bytea', prefix: '01' },
  aad: {
    read: [
      [{ text: 'rekey/dek/v1\0' }, { column: 'tenant_id', lengthPrefix: true }, { kekId: true, lengthPrefix: true }],
    ],
  },
  plaintextBytes: 32,
  // With REKEY_KEY_PROVIDER=aws-kms: 0x02 ‖ KMS ciphertext blob, bound to the tenant and the KEK id.
  kms: { prefix: '02', context: { 'rekey:tenant': 'tenant_id' } },
  // With REKEY_KEY_PROVIDER=vault-transit: 0x03 ‖ 'vault:v<n>:…', under a derived key whose context is the tenant.
  transit: { prefix: '03', context: 'tenant_id' },
};

/** Mycelium's `tenant.encrypted_dek`: `'v2:' + base64(nonce ‖ ciphertext ‖ tag)`, bound to the tenant UUID's bytes. */
export const MYCELIUM_DEK_FORMAT: SealedFormat = {
  value: { kind: 'combined', column: 'encrypted_dek', encoding: 'base64', prefix: 'v2:' },
  aad: { read: [[{ column: 'id', as: 'uuid' }]] },
  plaintextBytes: 32,
};

/**
 * Talos's `secrets` row: base64url (no padding) ciphertext, nonce and tag in three columns, bound to
 * `talos.secret.v1:<id>`; older rows are bound to the secret's name. A write always uses the v1 binding and stores it
 * in `aad`, as Talos's own rewrite does.
 */
export const TALOS_SECRET_FORMAT: SealedFormat = {
  value: { kind: 'split', ciphertext: 'ciphertext', nonce: 'nonce', tag: 'tag', encoding: 'base64url' },
  aad: {
    read: [[{ text: 'talos.secret.v1:' }, { column: 'id' }], [{ column: 'name' }]],
    store: { column: 'aad', encoding: 'base64url' },
  },
};

/** Tenant data written by rekey's application API: `'v2:' + base64url(nonce ‖ ciphertext ‖ tag)` under the DEK. */
export const REKEY_DATA_FORMAT: SealedFormat = {
  value: { kind: 'combined', column: 'ciphertext', encoding: 'base64url', prefix: 'v2:' },
  aad: { read: [[{ text: 'rekey/data/v2\0' }, { column: 'tenant_id' }]] },
};

/** A Mycelium v1 field: `base64(nonce ‖ ciphertext ‖ tag)`, no prefix, under the KEK itself, empty associated data. */
export const MYCELIUM_V1_FIELD_FORMAT: SealedFormat = {
  value: { kind: 'combined', column: 'value', encoding: 'base64' },
  aad: { read: [[]] },
};

/** A Mycelium v2 field: `'v2:' + base64(…)` under a DEK, bound to the tenant UUID's bytes and the field's name. */
export function myceliumV2FieldFormat(field: string): SealedFormat {
  return {
    value: { kind: 'combined', column: 'value', encoding: 'base64', prefix: 'v2:' },
    aad: { read: [[{ column: 'tenant', as: 'uuid' }, { text: field }]] },
  };
}
