// `npm run bench -- <tenants> --transit`: a keyspace whose KEKs never leave Vault Transit (the dev server the setup
// builds), rotated by the real workflow through a worker process, as `--kms` does against moto (bench/kms-rate.ts):
// each phase's requests a row and wall time, and the rate of `rewrap` requests reached against
// REKEY_VAULT_TRANSIT_RATE (each request is REKEY_VAULT_TRANSIT_BATCH rows). Writes bench/out/transit-<tenants>.md.
import path from 'node:path';
import { startVault } from '../src/dev/vault';
import type { Toolchain } from '../src/dev/toolchain';
import { VaultTransitKeys } from '../src/keyring/drivers/vault-transit';
import { storeBench, type StoreBenchOptions } from './kms-rate';

export function transitBench(options: StoreBenchOptions & { toolchain: Toolchain }): Promise<void> {
  const key = 'rekey-bench';
  return storeBench(options, {
    kind: 'Transit',
    server: 'Vault Transit (dev server)',
    flag: '--transit',
    rate: ['REKEY_VAULT_TRANSIT_RATE', 50],
    concurrency: ['REKEY_VAULT_TRANSIT_CONCURRENCY', 4],
    start: async () => {
      const vault = await startVault(options.toolchain.vault);
      return { endpoint: vault.address, env: vault.env, pid: vault.pid, children: false, stop: () => vault.stop() };
    },
    keyEnv: (endpoint) => ({ VAULT_ADDR: endpoint, REKEY_KEY_PROVIDER: 'vault-transit', REKEY_VAULT_TRANSIT_KEY: key }),
    seeder: (env) => VaultTransitKeys.fromEnv({ ...env, REKEY_VAULT_TRANSIT_RATE: '0' }),
    named: ['REKEY_VAULT_TRANSIT_BATCH'],
    provenance: `; Vault ${path.basename(path.dirname(options.toolchain.vault))} dev server (in memory) as the key store, on the same machine`,
  });
}
