import { describe, expect, it } from 'vitest';
import { assertTransition, canTransition, canUnwrap, canWrap, KEK_STATES } from '../../src/envelope/kek-lifecycle';
import { KekTransitionError } from '../../src/errors';

describe('KEK lifecycle', () => {
  it('a retired KEK is only restored (to decrypt_only) or destroyed, and nothing comes back from destroyed', () => {
    expect(canTransition('retired', 'decrypt_only')).toBe(true);
    expect(canTransition('retired', 'destroyed')).toBe(true);
    for (const to of ['provisioned', 'active'] as const) {
      expect(canTransition('retired', to)).toBe(false);
      expect(() => assertTransition('v1', 'retired', to)).toThrow(/only restored .* or destroyed/);
    }
    for (const to of KEK_STATES.filter((s) => s !== 'destroyed')) {
      expect(canTransition('destroyed', to)).toBe(false);
      expect(() => assertTransition('v1', 'destroyed', to)).toThrow(/nothing comes back from destroyed/);
    }
    expect(canUnwrap('destroyed')).toBe(false);
    expect(canWrap('destroyed')).toBe(false);
  });

  it('the active KEK cannot be retired', () => {
    expect(() => assertTransition('v2', 'active', 'retired')).toThrow(KekTransitionError);
    expect(() => assertTransition('v2', 'active', 'retired')).toThrow(/promote another KEK first/);
  });

  it('the forward path is provisioned → active → decrypt_only → retired', () => {
    expect(canTransition('provisioned', 'active')).toBe(true);
    expect(canTransition('active', 'decrypt_only')).toBe(true);
    expect(canTransition('decrypt_only', 'retired')).toBe(true);
  });

  it('a decrypt-only KEK can be promoted again (roll back), an unused provisioned one retired', () => {
    expect(canTransition('decrypt_only', 'active')).toBe(true);
    expect(canTransition('provisioned', 'retired')).toBe(true);
  });

  it('only the active KEK wraps; every KEK but a retired one unwraps', () => {
    expect(KEK_STATES.filter(canWrap)).toEqual(['active']);
    expect(KEK_STATES.filter(canUnwrap)).toEqual(['provisioned', 'active', 'decrypt_only']);
  });
});
