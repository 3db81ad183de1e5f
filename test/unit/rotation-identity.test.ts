import { describe, expect, it } from 'vitest';
import { opIdOf, resolveRotationReference, workflowIdFor } from '../../src/client/rotations';

describe("a rotation's identity is its target", () => {
  it('every surface derives the same workflow id from the target alone, whatever the KEKs', () => {
    expect(workflowIdFor({ from: 'current', to: 'new' })).toBe('kek-rotation-rekey');
    expect(workflowIdFor({ from: 'v1', to: 'v2' })).toBe('kek-rotation-rekey');
    expect(workflowIdFor({ target: 'talos', from: 'v1', to: 'v2' })).toBe('kek-rotation-talos');
    expect(workflowIdFor({ target: 'talos', from: 'v1', to: 'v2', tenantId: 'x' })).toBe('kek-rotation-talos');
  });

  it('a dry run writes nothing and gets an id of its own', () => {
    expect(workflowIdFor({ target: 'mycelium', from: '1', to: '2', dryRun: true }, 42)).toBe(
      'kek-rotation-mycelium-dry-run-42',
    );
  });

  it('a rotation is named by op id, workflow id, target, or the from:to of an earlier build', () => {
    expect(resolveRotationReference(opIdOf('kek-rotation-talos', 'run-1'))).toEqual({
      workflowId: 'kek-rotation-talos',
      firstRunId: 'run-1',
    });
    expect(resolveRotationReference('kek-rotation-talos')).toEqual({ workflowId: 'kek-rotation-talos' });
    expect(resolveRotationReference('mycelium')).toEqual({ workflowId: 'kek-rotation-mycelium' });
    expect(resolveRotationReference('v1:v2')).toEqual({ workflowId: 'kek-rotation-v1-to-v2' });
  });
});
