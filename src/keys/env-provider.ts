// The path docs/03's application example imports the environment's keys from (`rekey/dist/src/keys/env-provider`),
// kept for applications written against it: the driver is src/keyring/drivers/env.ts.
export { EnvKeyProvider } from '../keyring/drivers/env';
