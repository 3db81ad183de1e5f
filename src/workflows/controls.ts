// One operator action, registered as an update and as a signal with one handler body, so that a client without
// updates (tctl v1) can do everything a client with them can. Registering handlers schedules no command: histories
// recorded before the signals existed replay as they ran.
import type { SignalDefinition, UpdateDefinition } from '@temporalio/common';
import { setHandler } from '@temporalio/workflow';

export interface Control<Args extends unknown[], Answer> {
  /** Throws, with the reason, when the action cannot be done now or its input is wrong (typed errors of errors.ts). */
  refuse?: (...args: Args) => void;
  /** Does it; what it returns is the update's answer (a signal's is read from the `progress` query). */
  apply: (...args: Args) => Answer;
}

/**
 * Sets the handlers of `update` and `signal` to one action. The update's validator is `refuse`, so a refused update
 * is answered with the reason and leaves no event. A signal cannot be answered: one that `refuse` turns down changes
 * nothing and is handed to `ignored` with the same reason (the rotation notes it in its progress). A signal's input is
 * whatever its sender typed, so `refuse` also meets missing or malformed arguments: every error it throws is a refusal,
 * never a failed workflow task.
 */
export function setControlHandlers<Args extends unknown[], Answer>(
  update: UpdateDefinition<Answer, Args>,
  signal: SignalDefinition<NoInfer<Args>> | SignalDefinition<Partial<NoInfer<Args>>>,
  control: Control<NoInfer<Args>, NoInfer<Answer>>,
  ignored: (signal: string, why: string) => void,
): void {
  const { refuse, apply } = control;
  setHandler(update, (...args: Args) => apply(...args), refuse && { validator: (...args: Args) => refuse(...args) });
  setHandler(signal as SignalDefinition<Args>, (...args: Args) => {
    try {
      refuse?.(...args);
    } catch (err) {
      ignored(signal.name, err instanceof Error ? err.message : String(err));
      return;
    }
    apply(...args);
  });
}
