import os from 'node:os';
import { Command } from 'commander';
import { EnvKeyProvider } from '../../keyring/drivers/env';
import { generateKek, nextStoredKekId } from '../../keyring/keyring';
import { importKeks } from '../../keyring/import-keks';
import type { StoreDriver } from '../../keyring/driver';
import { rotationWorkflowId } from '../../rotation/identity';
import { restoreKek } from '../../targets/restore-kek';
import { targetKekStatus } from '../../targets/kek-status';
import { formatDuration } from '../../rotation/durations';
import type { KekRecord } from '../../store/kek-registry';
import { targetOption, withContext } from '../options';
import type { CliContext } from '../context';
import { CliError, KeyspaceMismatchError } from '../../errors';

export function kekStatusCommand(): Command {
  return new Command('kek-status')
    .description("a target's current KEK, each KEK's state and fingerprint, and the rows each one wraps")
    .addOption(targetOption())
    .action(
      withContext(async (context, options: { target: string }) => {
        const runtime = await context.targets().get(options.target);
        const status = await targetKekStatus(runtime);
        const noun = context.targets().definition(options.target).noun;
        const labels = [...new Set([...status.keks.map((k) => k.kekId), ...Object.keys(status.counts)])];
        const { keyspace } = runtime;
        const workflowId = rotationWorkflowId(status.target, keyspace);
        context.print(
          {
            target: status.target,
            keyspace: { id: keyspace.id, database_id: keyspace.databaseId, table: keyspace.table },
            workflow_id: workflowId,
            current_kek_id: status.currentKekId,
            stale_counts: status.staleCounts,
            rows_without_value: status.withoutValue,
            keks: status.keks,
          },
          () => [
            `target ${status.target}: current KEK ${status.currentKekId ?? '(none)'}`,
            `  keyspace: table ${keyspace.table} in database ${keyspace.databaseId}`,
            `  rotations run under the workflow id ${workflowId}`,
            ...labels.map((kekId) => {
              const kek = status.keks.find((k) => k.kekId === kekId);
              const line = `  ${kekId.padEnd(12)} ${(kek?.state ?? 'not in registry').padEnd(15)} ${String(status.counts[kekId] ?? 0).padStart(10)} ${noun}s  ${kek?.fingerprint ?? ''}`;
              const window = kek ? restoreWindow(kek, Date.now()) : undefined;
              return window !== undefined ? `${line}  ${window}` : line;
            }),
            ...(status.withoutValue > 0 ? [`  ${status.withoutValue} row(s) hold no ${noun} yet`] : []),
          ],
        );
      }),
    );
}

/** A retired KEK's restore deadline, as kek-status says it: until when `rekey keys restore` can bring it back. */
export function restoreWindow(kek: KekRecord, now: number): string | undefined {
  if (kek.state === 'destroyed') return kek.destroyedAt ? `destroyed ${kek.destroyedAt.toISOString()}` : 'destroyed';
  if (kek.state !== 'retired') return undefined;
  if (!kek.restorableUntil) return 'retired before restore windows existed: not restorable';
  const until = kek.restorableUntil.getTime();
  return until > now
    ? `restorable until ${kek.restorableUntil.toISOString()} (${formatDuration(until - now)} from now)`
    : `restore window ended ${kek.restorableUntil.toISOString()}; destroyed once no row needs it`;
}

/**
 * The keyspace of `target` in the database DATABASE_URL names, for a command that records it on a key; without
 * DATABASE_URL it is refused, saying what to set.
 */
async function keyspaceOf(context: CliContext, target: string, command: string): Promise<string> {
  if (!context.env.DATABASE_URL?.trim()) {
    throw new CliError(
      `${command} records the keyspace the key belongs to (a target's table in its database): set DATABASE_URL to that database, and --target (or REKEY_TARGET) if the target is not 'rekey'`,
      'invalid',
    );
  }
  return (await context.targets().keyspace(target)).id;
}

/**
 * Before `keys generate` or `keys import` writes into a store itself: a store whose owner record names another keyspace
 * for one of `kekIds` (a Vault KV or Secrets Manager secret records one owner for all its keys) gets nothing, as the
 * keyring's provision refuses it before a rotation writes (test/adversary/keys-cli-foreign-store). A store that
 * records an owner is compared with the keyspace of `target` in the database DATABASE_URL names.
 */
async function refuseAnotherKeyspace(
  context: CliContext,
  store: StoreDriver,
  kekIds: readonly string[],
  target: string,
  command: string,
): Promise<void> {
  const recorded: [string, string][] = [];
  for (const kekId of kekIds) {
    const owner = await store.ownerOf(kekId);
    if (owner !== undefined) recorded.push([kekId, owner]);
  }
  if (recorded.length === 0) return;
  const keyspace = await keyspaceOf(context, target, `${command} into ${store.description}, which records an owner,`);
  const foreign = recorded.find(([, owner]) => owner !== keyspace);
  if (foreign === undefined) return;
  throw new KeyspaceMismatchError(
    `${command}: ${store.description} records keyspace ${foreign[1]} as the owner of KEK '${foreign[0]}', and target '${target}' is keyspace ${keyspace}: nothing was written. ` +
      `A key store belongs to one keyspace: two that share one destroy each other's keys. Give target '${target}' a store of its own`,
  );
}

/** The keys a store names (as last read), by id, with their fingerprints: what keys list prints. */
async function named(store: StoreDriver): Promise<{ kekId: string; fingerprint: string }[]> {
  return (await store.list())
    .flatMap(({ kekId, fingerprint }) => (kekId === undefined ? [] : [{ kekId, fingerprint }]))
    .sort((a, b) => (a.kekId < b.kekId ? -1 : a.kekId > b.kekId ? 1 : 0));
}

export function keysCommand(): Command {
  const keys = new Command('keys')
    .description(
      'the key store: the keyring file (--keyring or REKEY_KEYRING_FILE, mode 0600), or the store REKEY_KEY_PROVIDER names',
    )
    .option('--keyring <file>', 'keyring file');
  keys
    .command('generate')
    .description('add a new random KEK to the store; prints its id and fingerprint, never the key')
    .option('--id <id>', 'KEK id (default: the next vN)')
    .addOption(
      targetOption('the keyspace the KEK belongs to, recorded on it in AWS KMS and Vault Transit (with DATABASE_URL)'),
    )
    .action(
      withContext(async (context, options: { id?: string; target: string }) => {
        const store = await context.keyStore(keys.opts<{ keyring?: string }>().keyring);
        try {
          // A store rekey may not write answers what the operator must do (OperatorMustActError: exit 2).
          const id = options.id ?? (await nextStoredKekId(store));
          // KMS and Transit refuse a key no keyspace owns: the key is made with its keyspace recorded.
          const owner = store.ownerAtCreation
            ? await keyspaceOf(context, options.target, `rekey keys generate on ${store.description}`)
            : undefined;
          // A store whose one owner record covers every key (Vault KV, Secrets Manager) is written only by its keyspace.
          if (owner === undefined)
            await refuseAnotherKeyspace(context, store, [id], options.target, 'rekey keys generate');
          const { fingerprint } = await generateKek(store, id, owner === undefined ? {} : { owner });
          context.print(
            {
              kekId: id,
              fingerprint,
              store: store.description,
              ...(owner && { keyspace: owner }),
            },
            () => [
              `generated KEK '${id}' (${fingerprint}) in ${store.description}${owner ? `, keyspace ${owner}` : ''}`,
            ],
          );
        } finally {
          store.close();
        }
      }),
    );
  keys
    .command('claim')
    .description(
      "record a target's keyspace as the owner of a KEK that has none (an AWS KMS key made by hand or by an earlier keys generate; a Vault Transit key, a Vault KV secret or a Secrets Manager secret made before owner records; a keyring file's KEK an application could not record), naming the key by its id and fingerprint",
    )
    .argument('<id>', 'KEK id')
    .requiredOption(
      '--fingerprint <fingerprint>',
      'the key, as rekey keys list prints it (kms:<key ARN>, vault-transit:…, kcv1:… for Vault KV and Secrets Manager)',
    )
    .addOption(targetOption('the keyspace that claims the KEK (with DATABASE_URL)'))
    .action(
      withContext(async (context, kekId: string, options: { fingerprint: string; target: string }) => {
        const store = await context.keyStore(keys.opts<{ keyring?: string }>().keyring, { create: false });
        try {
          const keyspace = await keyspaceOf(context, options.target, `rekey keys claim on ${store.description}`);
          const outcome = await store.claimKey(kekId, options.fingerprint.trim(), keyspace);
          context.print({ kekId, fingerprint: options.fingerprint, keyspace, target: options.target, outcome }, () => [
            outcome === 'claimed'
              ? `KEK '${kekId}' (${options.fingerprint}) is keyspace ${keyspace}'s (target '${options.target}'): its rotations may use, retire and destroy it`
              : `KEK '${kekId}' (${options.fingerprint}) was keyspace ${keyspace}'s already (target '${options.target}')`,
          ]);
        } finally {
          store.close();
        }
      }),
    );
  keys
    .command('list')
    .description('KEK ids and fingerprints in the store (a keyring file that does not exist: exit 3)')
    .action(
      withContext(async (context) => {
        const store = await context.keyStore(keys.opts<{ keyring?: string }>().keyring, { create: false });
        try {
          const listed = await named(store);
          context.print(listed, () => listed.map((k) => `${k.kekId.padEnd(12)} ${k.fingerprint}`));
        } finally {
          store.close();
        }
      }),
    );
  keys
    .command('import')
    .description(
      'copy the KEKs of <PREFIX>_KEK_<id> environment variables into the keyring file (--keyring, REKEY_KEYRING_FILE) or the Secrets Manager secret (REKEY_KEY_PROVIDER=aws-secrets-manager), keeping their fingerprints; never overwrites another key',
    )
    .option(
      '--prefix <prefix>',
      'the variables to read: <PREFIX>_KEK_<id> and <PREFIX>_CURRENT_KEK_ID (default: REKEY_ENV_PREFIX, else REKEY)',
    )
    .addOption(
      targetOption(
        "the keyspace the KEKs are imported for, checked against the store's owner record where it has one (with DATABASE_URL)",
      ),
    )
    .action(
      withContext(async (context, options: { prefix?: string; target: string }) => {
        // The command's environment (runCli's), as every other command reads it: not process.env.
        const { env } = context;
        const source = new EnvKeyProvider(env, options.prefix ?? (env.REKEY_ENV_PREFIX || 'REKEY'));
        const keyring = keys.opts<{ keyring?: string }>().keyring;
        const provider = env.REKEY_KEY_PROVIDER?.trim() || 'env';
        let store: StoreDriver | undefined;
        try {
          if (keyring === undefined && provider === 'env' && !env.REKEY_KEYRING_FILE) {
            throw new CliError(
              'name where to import: --keyring <file> (or REKEY_KEYRING_FILE), or REKEY_KEY_PROVIDER=aws-secrets-manager with REKEY_AWS_SECRET_ID',
              'invalid',
            );
          }
          // A store that takes no key bytes refuses at its first write, saying where to import (exit 2).
          store = await context.keyStore(keyring);
          const destination = store;
          const ids = (await source.list()).flatMap((k) => (k.kekId === undefined ? [] : [k.kekId]));
          await refuseAnotherKeyspace(context, destination, ids, options.target, 'rekey keys import');
          const imported = await importKeks(source, destination);
          context.print({ store: destination.description, keks: imported }, () => [
            `${destination.description} holds the KEKs of ${source.description}, with the same fingerprints:`,
            ...imported.map(
              (k) => `  ${k.kekId.padEnd(12)} ${k.fingerprint}  ${k.outcome}${k.current ? ' (current)' : ''}`,
            ),
            'The registry trusts them by fingerprint: nothing needs rotating. Point every worker, admin API and application at this store, then remove the variables.',
          ]);
        } finally {
          store?.close();
          source.close();
        }
      }),
    );
  keys
    .command('restore')
    .description(
      'bring a retired KEK back to decrypt-only within its restore window (the runbook\'s "re-add the old KEK"); recorded with the reason',
    )
    .argument('<id>', 'KEK id')
    .addOption(targetOption())
    .requiredOption('--reason <text>', 'why (recorded in rekey.kek_events with the actor)')
    .option('--actor <name>', 'who asks (default: the OS user)')
    .action(
      withContext(async (context, kekId: string, options: { target: string; reason: string; actor?: string }) => {
        const runtime = await context.targets().get(options.target);
        const actor = options.actor ?? os.userInfo().username;
        const restored = await restoreKek(runtime, kekId, options.reason, actor);
        const { operatorMust } = restored;
        // What ends the restore: a rotation from it to the active KEK moves what it wraps and retires it again.
        const active = (await runtime.registry.active())?.kekId;
        const whenDone =
          active === undefined
            ? 'rotate from it when you are done.'
            : `when you are done, rekey rotate --target ${options.target} --from ${kekId} --to ${active} moves what it wraps and retires it again.`;
        context.print(
          {
            target: options.target,
            kekId,
            state: restored.state,
            fingerprint: restored.fingerprint,
            actor,
            ...(operatorMust !== undefined && { operatorMust }),
          },
          () => [
            `KEK '${kekId}' of target '${options.target}' is ${restored.state} again (${restored.fingerprint}); recorded: ${actor}: ${options.reason}`,
            `It unwraps, and wraps nothing. Applications and workers load it on their next registry read; ${whenDone}`,
            // The store's part, which rekey may not do: a process that no longer holds the key cannot open its DEKs.
            ...(operatorMust !== undefined ? [`The key store's part is yours: ${operatorMust}`] : []),
          ],
        );
      }),
    );
  return keys;
}
