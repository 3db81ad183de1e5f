import { DefaultLogger, Runtime } from '@temporalio/worker';

// One Runtime per test process. Tests provoke failures on purpose (retried activities, rejected updates, workers
// shut down with runs in flight): keep the SDK's warnings about them, native ones included, out of the output.
Runtime.install({
  logger: new DefaultLogger('ERROR'),
  telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } },
});
