import type { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { REKEY_SEARCH_ATTRIBUTES } from '../workflows/search-attributes';

const GRPC_ALREADY_EXISTS = 6;
const GRPC_UNIMPLEMENTED = 12;

/** Registers rekey's custom search attributes in the namespace, where they are missing. Idempotent. */
export async function ensureSearchAttributes(connection: Connection, namespace: string): Promise<void> {
  let registered: Record<string, unknown> = {};
  try {
    registered = (await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
  } catch (err) {
    // The time-skipping test server can add search attributes but not list them.
    if ((err as { code?: number }).code !== GRPC_UNIMPLEMENTED) throw err;
  }
  const missing = REKEY_SEARCH_ATTRIBUTES.filter((key) => !(key.name in registered));
  if (missing.length === 0) return;
  try {
    await connection.operatorService.addSearchAttributes({
      namespace,
      searchAttributes: Object.fromEntries(
        missing.map((key) => [key.name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD]),
      ),
    });
  } catch (err) {
    if ((err as { code?: number }).code !== GRPC_ALREADY_EXISTS) throw err;
  }
}
