export interface EventuallyOptions {
  /**
   * Real time allowed, each check included (ms; 60 s by default). Generous for a loaded 2-core machine, and well inside
   * the test timeout (120 s), so that a test that waits for what never happens fails with what it waited for.
   */
  within?: number;
  /** Real time between checks (ms; 50 by default). */
  every?: number;
  /** Checked before each check: a reason to fail at once (a process that exited), or undefined to go on waiting. */
  failIf?: () => string | undefined;
  /** What the failure says was seen last, beside the last answer of `check` (a process's output, say). */
  describe?: () => string | Promise<string>;
}

/**
 * Polls `check` until it answers something other than undefined, null or false, and returns that answer. Fails with
 * `<what> did not happen within <ms> ms` and the last answer (or error) seen, once `within` has passed, a check hangs
 * past it, or `failIf` gives a reason. An error thrown by `check` fails at once: a check that cannot yet answer says
 * so by answering undefined.
 */
export async function eventually<T>(
  what: string,
  check: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  options: EventuallyOptions = {},
): Promise<T> {
  const ms = options.within ?? 60_000;
  const every = options.every ?? 50;
  const deadline = Date.now() + ms;
  let last: unknown;
  const failure = async (why: string) => {
    const seen = options.describe ? `; ${await options.describe()}` : '';
    return `${what} ${why}; last answer: ${show(last)}${seen}`;
  };
  for (;;) {
    const reason = options.failIf?.();
    if (reason !== undefined) throw new Error(await failure(`will not happen: ${reason}`));
    const answer = await within(Promise.resolve(check()), Math.max(1, deadline - Date.now()), () =>
      failure(`did not happen within ${ms} ms (the last check did not answer)`),
    );
    if (answer !== undefined && answer !== null && answer !== false) return answer;
    last = answer;
    if (Date.now() + every > deadline) throw new Error(await failure(`did not happen within ${ms} ms`));
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 500 ? `…${value.slice(-500)}` : value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * `promise`, or after `ms` of real time a failure whose message `why` gives (it may ask a server what is stuck): the
 * one watchdog of the test helpers, so that a wait that hangs fails the test at once with its reason.
 */
export async function within<T>(promise: Promise<T>, ms: number, why: () => string | Promise<string>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void Promise.resolve()
        .then(why)
        .then(
          (message) => reject(new Error(message)),
          (err: unknown) => reject(err instanceof Error ? err : new Error(String(err))),
        );
    }, ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
