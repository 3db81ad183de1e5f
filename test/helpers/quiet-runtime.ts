import { DefaultLogger, Runtime } from '@temporalio/worker';

// One Runtime per test process; keep worker lifecycle chatter out of test output.
Runtime.install({ logger: new DefaultLogger('WARN') });
