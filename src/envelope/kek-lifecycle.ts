import { KekTransitionError } from '../errors';

// provisioned ──promote──▶ active ──(next KEK promoted)──▶ decrypt_only ──retire──▶ retired
//      │                     ▲                                  │
//      └──────retire─────────┼──────── re-promote (roll back) ──┘
export const KEK_STATES = ['provisioned', 'active', 'decrypt_only', 'retired'] as const;
export type KekState = (typeof KEK_STATES)[number];

const ALLOWED: Record<KekState, readonly KekState[]> = {
  provisioned: ['active', 'retired'],
  active: ['decrypt_only'],
  decrypt_only: ['active', 'retired'],
  retired: [],
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
    from === 'retired'
      ? 'nothing comes back from retired'
      : (WHY_NOT[`${from}->${to}`] ?? `allowed from ${from}: ${ALLOWED[from].join(', ') || 'nothing'}`);
  throw new KekTransitionError(kekId, from, to, reason);
}

/** Which KEKs an application may still unwrap with: every one that is not retired. */
export function canUnwrap(state: KekState): boolean {
  return state !== 'retired';
}

/** Only the active KEK wraps new or updated DEKs. */
export function canWrap(state: KekState): boolean {
  return state === 'active';
}
