import { DefaultLogger, Runtime } from '@temporalio/worker';

// One Runtime per test process; keep worker chatter (and the failures tests provoke on purpose) out of the output.
Runtime.install({ logger: new DefaultLogger('ERROR') });
