import { describe, expect, it } from 'vitest';
import { opIdOf, resolveRotationReference, workflowIdFor } from '../../src/client/rotations';
import {
  destroyWorkflowIdOf,
  isRotationIdOf,
  keyspaceOf,
  legacyDestroyWorkflowId,
  migrationWorkflowIdOf,
  parseKeyspaceId,
  parseWorkflowId,
  rotationWorkflowId,
  shortDatabaseId,
} from '../../src/rotation/identity';
import { parseRotationRequest } from '../../src/rotation/rotation-input';

const A = keyspaceOf('3f2a9c01-b7e4-4d5a-9c3e-0a1b2c3d4e5f', 'rekey.tenant_deks');
const B = keyspaceOf('8d0e6f12-0000-4abc-8def-123456789abc', 'rekey.tenant_deks');

describe("a rotation's identity is its keyspace: its target's table in one database", () => {
  it('a keyspace is the database identity and the table, printable and parsed back', () => {
    expect(A.id).toBe('3f2a9c01-b7e4-4d5a-9c3e-0a1b2c3d4e5f/rekey.tenant_deks');
    expect(parseKeyspaceId(A.id)).toEqual(A);
    expect(parseKeyspaceId('rekey.tenant_deks')).toBeUndefined();
    expect(shortDatabaseId(A)).toBe('3f2a9c01b7e4');
    expect(() => parseRotationRequest({ from: 'v1', to: 'v2', keyspace: 'nonsense' })).toThrow(/not a keyspace id/);
  });

  it('every surface derives the same workflow id from the target and its keyspace, whatever the KEKs', () => {
    expect(workflowIdFor({ from: 'current', to: 'new' }, A)).toBe('kek-rotation-rekey.3f2a9c01b7e4');
    expect(workflowIdFor({ from: 'v1', to: 'v2' }, A)).toBe(rotationWorkflowId('rekey', A));
    const talos = keyspaceOf(A.databaseId, 'public.secrets');
    expect(workflowIdFor({ target: 'talos', from: 'v1', to: 'v2' }, talos)).toBe('kek-rotation-talos.3f2a9c01b7e4');
    expect(workflowIdFor({ target: 'talos', from: 'v1', to: 'v2', tenantId: 'x' }, talos)).toBe(
      'kek-rotation-talos.3f2a9c01b7e4',
    );
  });

  it('Finding 9: two databases that both use the target rekey rotate under two workflow ids in one namespace', () => {
    expect(rotationWorkflowId('rekey', A)).not.toBe(rotationWorkflowId('rekey', B));
    expect(parseWorkflowId(rotationWorkflowId('rekey', B))).toEqual({
      kind: 'rotation',
      target: 'rekey',
      database: '8d0e6f120000',
    });
    // A run checks the id it runs under: its own keyspace's, not the other database's, nor the old shared one.
    expect(isRotationIdOf(rotationWorkflowId('rekey', A), 'rekey', A, false)).toBe(true);
    expect(isRotationIdOf(rotationWorkflowId('rekey', B), 'rekey', A, false)).toBe(false);
    expect(isRotationIdOf('kek-rotation-rekey', 'rekey', A, false)).toBe(false);
  });

  it('a dry run writes nothing and gets an id of its own, derived from its keyspace', () => {
    const mycelium = keyspaceOf(A.databaseId, 'public.tenant');
    const id = workflowIdFor({ target: 'mycelium', from: '1', to: '2', dryRun: true }, mycelium, 42);
    expect(id).toBe('kek-rotation-mycelium.3f2a9c01b7e4-dry-run-42');
    expect(isRotationIdOf(id, 'mycelium', mycelium, true)).toBe(true);
    expect(isRotationIdOf(id, 'mycelium', mycelium, false)).toBe(false);
    expect(migrationWorkflowIdOf('mycelium', mycelium)).toBe('dek-migration-mycelium.3f2a9c01b7e4');
    expect(parseWorkflowId(migrationWorkflowIdOf('mycelium', mycelium, 7))).toEqual({
      kind: 'migration',
      target: 'mycelium',
      database: '3f2a9c01b7e4',
      dryRunAt: 7,
    });
  });

  it('Finding 8: destroy workflow ids are unambiguous: billing/eu-v1 and billing-eu/v1 get two ids, each parsed back to its own target and KEK', () => {
    // Before: `rekey-destroy-<target>-<kek>` gave both the same id, and the second destruction was dropped.
    expect(legacyDestroyWorkflowId('billing', 'eu-v1')).toBe(legacyDestroyWorkflowId('billing-eu', 'v1'));
    const first = destroyWorkflowIdOf('billing', A, 'eu-v1');
    const second = destroyWorkflowIdOf('billing-eu', A, 'v1');
    expect(first).not.toBe(second);
    expect(parseWorkflowId(first)).toEqual({
      kind: 'destroy',
      target: 'billing',
      database: '3f2a9c01b7e4',
      kekId: 'eu-v1',
    });
    expect(parseWorkflowId(second)).toEqual({
      kind: 'destroy',
      target: 'billing-eu',
      database: '3f2a9c01b7e4',
      kekId: 'v1',
    });
    // KEK ids may hold '.', target names may not: still one reading.
    expect(parseWorkflowId(destroyWorkflowIdOf('billing', A, 'eu.v1'))).toMatchObject({
      target: 'billing',
      kekId: 'eu.v1',
    });
    // The same KEK of the same target in another database is another destruction.
    expect(destroyWorkflowIdOf('billing', B, 'eu-v1')).not.toBe(first);
  });

  it('a rotation is named by op id, workflow id (this build’s or an older one’s), target (in the caller’s keyspace), or the from:to of the first release', async () => {
    const lookup = (target: string) => Promise.resolve(keyspaceOf(A.databaseId, `public.${target}`));
    expect(await resolveRotationReference(opIdOf('kek-rotation-talos.3f2a9c01b7e4', 'run-1'))).toEqual({
      workflowId: 'kek-rotation-talos.3f2a9c01b7e4',
      firstRunId: 'run-1',
    });
    expect(await resolveRotationReference('kek-rotation-talos.3f2a9c01b7e4')).toEqual({
      workflowId: 'kek-rotation-talos.3f2a9c01b7e4',
    });
    expect(await resolveRotationReference('kek-rotation-talos')).toEqual({ workflowId: 'kek-rotation-talos' });
    expect(await resolveRotationReference('mycelium', lookup)).toEqual({
      workflowId: 'kek-rotation-mycelium.3f2a9c01b7e4',
      legacyWorkflowId: 'kek-rotation-mycelium',
    });
    expect(await resolveRotationReference('v1:v2')).toEqual({ workflowId: 'kek-rotation-v1-to-v2' });
    // A target name without a database to resolve it in is refused, saying what to give instead.
    await expect(resolveRotationReference('mycelium')).rejects.toThrow(/DATABASE_URL/);
  });
});
