import { describe, expect, it } from 'vitest';
import { DevServerExitedError } from '../../src/dev/dev-server';

describe('a dev server that exits while starting', () => {
  it("says why (a panic's first line, not the last frame of its stack)", () => {
    const stderr = [
      'panic: listen tcp 127.0.0.1:41233: bind: address already in use',
      '',
      'goroutine 1 [running]:',
      'go.temporal.io/server/temporal.(*ServerImpl).Start(...)',
      '\tgithub.com/temporalio/cli@v1.5.1/cmd/temporal/main.go:18 +0x96',
    ].join('\n');
    expect(new DevServerExitedError(stderr).message).toBe(
      'temporal dev server exited: panic: listen tcp 127.0.0.1:41233: bind: address already in use',
    );
    expect(new DevServerExitedError('').message).toBe('temporal dev server exited: no output');
  });
});
