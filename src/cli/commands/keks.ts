import { BUILTIN_TARGET } from '../../targets/builtin';
import { Command } from 'commander';
import { KekRegistry } from '../../store/kek-registry';
import { TenantDekStore } from '../../store/tenant-deks';
import { withContext } from '../options';

export function kekStatusCommand(): Command {
  return new Command('kek-status')
    .description('the current KEK and the number of DEKs per KEK id (stale counts)')
    .action(
      withContext(async (context) => {
        const status = await new TenantDekStore(context.db()).kekStatus();
        const keks = await new KekRegistry(context.db(), BUILTIN_TARGET).list();
        context.print(
          { current_kek_id: status.currentKekId, stale_counts: status.staleCounts, dek_counts: status.dekCounts, keks },
          () => [
            `current KEK: ${status.currentKekId ?? '(none)'}`,
            ...keks.map(
              (k) =>
                `  ${k.kekId.padEnd(12)} ${k.state.padEnd(13)} ${String(status.dekCounts[k.kekId] ?? 0).padStart(10)} DEKs  ${k.fingerprint}`,
            ),
          ],
        );
      }),
    );
}

export function keysCommand(): Command {
  const keys = new Command('keys')
    .description('the file keyring (REKEY_KEYRING_FILE, mode 0600)')
    .option('--keyring <file>', 'keyring file');
  keys
    .command('generate')
    .description('add a new random KEK to the keyring; prints its id and fingerprint, never the key')
    .option('--id <id>', 'KEK id (default: the next vN)')
    .action(
      withContext(async (context, options: { id?: string }) => {
        const keyring = context.keyring(keys.opts<{ keyring?: string }>().keyring);
        try {
          const id = await keyring.generate(options.id);
          context.print({ kekId: id, fingerprint: keyring.fingerprint(id), file: keyring.file }, () => [
            `generated KEK '${id}' (${keyring.fingerprint(id)}) in ${keyring.file}`,
          ]);
        } finally {
          keyring.close();
        }
      }),
    );
  keys
    .command('list')
    .description('KEK ids and fingerprints in the keyring')
    .action(
      withContext((context) => {
        const keyring = context.keyring(keys.opts<{ keyring?: string }>().keyring);
        try {
          const listed = keyring.kekIds().map((kekId) => ({ kekId, fingerprint: keyring.fingerprint(kekId) }));
          context.print(listed, () => listed.map((k) => `${k.kekId.padEnd(12)} ${k.fingerprint}`));
        } finally {
          keyring.close();
        }
      }),
    );
  return keys;
}
