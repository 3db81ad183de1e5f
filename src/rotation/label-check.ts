// The check of every row labelled with the rotation's new KEK before grace and retire: a row whose label says `to`
// but whose value is still sealed under `from` (an application's bug, a crash between its own writes, a backup
// restored) is neither a row the passes move (they read rows labelled `from` or neither KEK) nor one the retire proof
// tries (rows labelled `from`): unchecked, it would be lost with `from`. Plain data and its sums, shared by the activity
// that checks (src/activities/rewrap.ts) and the workflow that carries it across parts (src/workflows/rotate-kek.ts).
import type { TenantFailure } from '../rewrap/counters';
import { mergeVerified, type VerifiedUnder } from './verified-mark';

/** What a check of the rows labelled `to` found. */
export interface LabelCheck {
  /** Rows labelled `to` that were tried under `to` (each once: a part's rows lie after the cursor it was given). */
  checked: number;
  /** Rows labelled `to` that do not open under `to`. */
  unreadable: number;
  /** Of those, the rows whose value opens under `from`: they still need it. */
  underFrom: number;
  /** The first few unreadable rows, with why. */
  named: TenantFailure[];
  /**
   * What the check proved, for retire's pre-pass to reuse (verified-mark.ts): absent before the first part's result,
   * null when a part had none (a part of a build before it).
   */
  verified?: VerifiedUnder | null;
}

/** How many unreadable rows a check names. */
export const NAMED_CHECKED = 20;

export const emptyCheck = (): LabelCheck => ({ checked: 0, unreadable: 0, underFrom: 0, named: [] });

export function addChecks(a: LabelCheck, b: LabelCheck): LabelCheck {
  return {
    checked: a.checked + b.checked,
    unreadable: a.unreadable + b.unreadable,
    underFrom: a.underFrom + b.underFrom,
    named: [...a.named, ...b.named].slice(0, NAMED_CHECKED),
    verified: mergeVerified(a, b),
  };
}

/** A check under way, carried across its parts (and continue-as-new): where it goes on, what it found so far. */
export interface LabelCheckState {
  part: number;
  cursor: string;
  sum: LabelCheck;
}

export const startCheck = (): LabelCheckState => ({ part: 0, cursor: '', sum: emptyCheck() });

/** What one part of the check did: its sums, where the next part goes on, and whether no row is left after it. */
export interface LabelCheckOutcome extends LabelCheck {
  cursor: string;
  done: boolean;
}

/** The rotation's failure for rows labelled `to` that do not open under it: what they are and what to do. */
export function describeUnreadableLabels(check: LabelCheck, from: string, to: string): string {
  const named = check.named.map((row) => `${row.tenantId} (${row.reason})`).join(', ');
  const underFrom =
    check.underFrom > 0
      ? `; ${check.underFrom} of them are sealed under '${from}', the KEK this rotation replaces, though labelled '${to}'`
      : '';
  return (
    `verify: ${check.unreadable} of the ${check.checked} row(s) labelled '${to}' do not open under '${to}'${underFrom}. ` +
    `'${from}' is not retired, and stays usable for reading: nothing was lost. Find what wrote these rows (an application that sealed under one KEK and labelled with another, a crash between its writes, a backup restored), ` +
    `label each with the KEK its value is under, and start the rotation again. The first ${check.named.length}: ${named}`
  );
}
