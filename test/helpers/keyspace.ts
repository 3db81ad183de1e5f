import type { Pool } from 'pg';
import { destroyWorkflowIdOf, rotationWorkflowId, type Keyspace } from '../../src/rotation/identity';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { PRESETS } from '../../src/targets/presets';
import { targetKeyspace } from '../../src/targets/runtime';
import type { TargetDefinition } from '../../src/targets/target';

/** The keyspace of a target (rekey's own by default) in a test database, as every surface computes it. */
export function keyspaceIn(db: Pool, definition: TargetDefinition | string = BUILTIN_TARGET): Promise<Keyspace> {
  return targetKeyspace(db, typeof definition === 'string' ? PRESETS[definition]! : definition);
}

/** The workflow id a target's rotations run under in a test database: the only one a rotation accepts. */
export async function rotationIdIn(db: Pool, definition: TargetDefinition | string = BUILTIN_TARGET): Promise<string> {
  const keyspace = await keyspaceIn(db, definition);
  return rotationWorkflowId(typeof definition === 'string' ? definition : definition.name, keyspace);
}

/** The workflow id of the destruction of a KEK of a target (rekey's own by default) in a test database. */
export async function destroyIdIn(db: Pool, kekId: string, target = BUILTIN_TARGET): Promise<string> {
  return destroyWorkflowIdOf(target, await keyspaceIn(db, target), kekId);
}
