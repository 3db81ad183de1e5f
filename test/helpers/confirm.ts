// The operator's confirmation of a rotation whose application owns its current KEK (Mycelium, Talos), through the CLI.
import type { WorkflowHandle } from '@temporalio/client';
import { expect } from 'vitest';
import type { CliResult } from './cli';
import { progressUntil } from './temporal';

/** `rekey rotate` of a Mycelium database from generation 1 to 2, as Mycelium's guide types it (options follow). */
export const MYCELIUM_ROTATE_1_TO_2 = ['rotate', '--target', 'mycelium', '--from-version', '1', '--to-version', '2'];

/**
 * Once the rotation `handle` waits for the operator to confirm retire (still running), confirms it as the operator
 * does, `rekey confirm <target> --step retire --note <note>`, which answers without an error; returns that answer.
 */
export async function confirmRetireWhenAsked(
  rekey: (...args: string[]) => Promise<CliResult>,
  handle: WorkflowHandle,
  target: string,
  note: string,
): Promise<CliResult> {
  await progressUntil(handle, (p) => p.waiting?.step === 'retire' && p.outcome === 'running', { withinMs: 90_000 });
  const confirmed = await rekey('confirm', target, '--step', 'retire', '--note', note);
  expect(confirmed, confirmed.stderr).toMatchObject({ code: 0, stderr: '' });
  return confirmed;
}
