import { KekTransitionError } from '../errors';

// provisioned ──promote──▶ active ──(next KEK promoted)──▶ decrypt_only ──retire──▶ retired ──window ends──▶ destroyed
//      │                     ▲                                  │  ▲                     │
//      └──────retire─────────┼──────── re-promote (roll back) ──┘  └──restore (window)───┘
export const KEK_STATES = ['provisioned', 'active', 'decrypt_only', 'retired', 'destroyed'] as const;
export type KekState = (typeof KEK_STATES)[number];

const ALLOWED: Record<KekState, readonly KekState[]> = {
  provisioned: ['active', 'retired'],
  active: ['decrypt_only'],
  decrypt_only: ['active', 'retired'],
  // Restore (within the KEK's restore window, with a reason) or destruction (after it).
  retired: ['decrypt_only', 'destroyed'],
  destroyed: [],
};

const WHY_NOT: Partial<Record<`${KekState}->${KekState}`, string>> = {
  'active->retired': 'the active KEK wraps every new DEK; promote another KEK first',
  'active->provisioned': 'a KEK that has wrapped DEKs cannot be un-provisioned',
  'decrypt_only->provisioned': 'a KEK that has wrapped DEKs cannot be un-provisioned',
};

export function canTransition(from: KekState, to: KekState): boolean {
  return ALLOWED[from].includes(to);
}

/** Throws KekTransitionError with the reason unless the lifecycle allows `from` → `to`. */
export function assertTransition(kekId: string, from: KekState, to: KekState): void {
  if (canTransition(from, to)) return;
  const reason =
    from === 'destroyed'
      ? 'nothing comes back from destroyed'
      : from === 'retired'
        ? 'a retired KEK is only restored (to decrypt_only, within its window) or destroyed'
        : (WHY_NOT[`${from}->${to}`] ?? `allowed from ${from}: ${ALLOWED[from].join(', ') || 'nothing'}`);
  throw new KekTransitionError(kekId, from, to, reason);
}

/** Which KEKs an application may still unwrap with: every one that is not retired (or destroyed). */
export function canUnwrap(state: KekState): boolean {
  return state !== 'retired' && state !== 'destroyed';
}

/** Only the active KEK wraps new or updated DEKs. */
export function canWrap(state: KekState): boolean {
  return state === 'active';
}
