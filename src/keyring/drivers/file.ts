import { randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { kekFingerprint } from '../../envelope/dek-wrapping';
import {
  type DestroyOutcome,
  type ProcessStore,
  type ProcessStoreContext,
  type ProvisionOptions,
  type RecordedKek,
  type StoreName,
} from '../driver';
import { decodeKek, InMemoryKeys, LocalKeysDriver, newKekId, newKekText } from '../local-keys';
import {
  KekFingerprintMismatchError,
  KeyMaterialError,
  KeyspaceMismatchError,
  KeyStoreRefusedError,
  UnknownKekError,
} from '../../errors';

const KeyringFile = z.object({
  format: z.literal('rekey-keyring/v1'),
  current: z.string().optional(),
  keks: z.array(
    z.object({
      id: z.string(),
      key: z.string(),
      createdAt: z.string(),
      /** The keyspace (`<database id>/<schema.table>`) the KEK belongs to; absent in files written before owners. */
      owner: z.string().optional(),
      /**
       * Written by `rekey keys import`: bytes another store held, which registries may record already. Taken without an
       * owner only by a keyspace whose registry records it, or by `rekey keys claim`.
       */
      imported: z.boolean().optional(),
    }),
  ),
});
type KeyringFile = z.infer<typeof KeyringFile>;
type KeyringEntry = KeyringFile['keks'][number];

/**
 * KEKs in a local JSON file with mode 0600: the embedded default for the demo and development.
 * A keyring that group or others can read is refused.
 */
export class FileKeyring extends LocalKeysDriver {
  readonly description: string;
  readonly makesKeks = true;

  constructor(readonly file: string) {
    const description = `keyring file ${file}`;
    super(description);
    this.description = description;
    this.keys.replaceWith(this.load());
  }

  /** Creates an empty keyring (mode 0600) unless one exists; returns the provider over it. */
  static open(file: string, options: { create?: boolean } = {}): FileKeyring {
    if (options.create && !fs.existsSync(file)) {
      writeKeyring(file, { format: 'rekey-keyring/v1', keks: [] }, 'wx');
    }
    return new FileKeyring(file);
  }

  protected load(): InMemoryKeys {
    const parsed = readKeyring(this.file);
    const keys = new InMemoryKeys(this.description);
    try {
      for (const kek of parsed.keks) keys.add(kek.id, decodeKek(kek.key, `${this.file} (KEK '${kek.id}')`), this.file);
      if (parsed.current !== undefined && !keys.has(parsed.current)) {
        throw new KeyMaterialError(
          `${this.file} names '${parsed.current}' as current, but holds no such KEK`,
          this.file,
        );
      }
    } catch (err) {
      keys.clear();
      throw err;
    }
    this.configuredCurrentKekId = parsed.current;
    return keys;
  }

  /** The KEK's owner, as the file records it. */
  ownerOf(kekId: string): Promise<string | undefined> {
    return Promise.resolve(readKeyring(this.file).keks.find((k) => k.id === kekId)?.owner);
  }

  /**
   * An application's first seed: not from a KEK the file records as another keyspace's. A KEK the file records no
   * owner for (made by `rekey keys generate` or imported) is this keyspace's from now on: the file records it, under
   * its lock, before the registry is seeded. Else a second deployment pointed at the same file (another database, a
   * registry this one cannot see) seeded from it too, and its first rotation's adopt took the KEK, retired and
   * destroyed it, proving only its own rows (test/adversary/file-keyring-unowned-shared.test.ts).
   */
  override async refuseSeed(kekId: string, keyspace: string): Promise<void> {
    const entry = readKeyring(this.file).keks.find((k) => k.id === kekId);
    if (entry === undefined) return;
    let owner = entry.owner;
    // Imported bytes may be recorded by another registry already (the deployment that imported them): not taken.
    if (owner === undefined && entry.imported === true) {
      throw this.unclaimed(
        entry,
        keyspace,
        'it was imported (rekey keys import): the registry of the deployment that imported it may record it already',
      );
    }
    if (owner === undefined) {
      try {
        const recorded = await this.recordOwner(kekId, keyspace);
        owner = recorded.held ? (recorded.before ?? keyspace) : undefined;
      } catch (err) {
        // A file mounted read-only for the application: not seeded from a KEK no keyspace has taken. The cause names
        // the file and the failed write only (never its content).
        const cause = err instanceof Error ? err.message : String(err);
        throw this.unclaimed(entry, keyspace, `this process cannot record this keyspace there (${cause})`);
      }
    }
    if (owner === undefined || owner === keyspace) return;
    throw new KeyspaceMismatchError(
      `not seeding the registry of keyspace ${keyspace} with KEK '${kekId}': ${this.description} records keyspace ${owner} as its owner. Give this keyspace a keyring file of its own (REKEY_KEYRING_FILE)`,
    );
  }

  /** The fingerprint of the key an entry of the file holds (its bytes zeroized once read). */
  private fingerprintOf(entry: KeyringEntry): string {
    const key = decodeKek(entry.key, `${this.file} (KEK '${entry.id}')`);
    try {
      return kekFingerprint(key);
    } finally {
      key.fill(0);
    }
  }

  /**
   * Under the file's lock: records `keyspace` as the owner of KEK `kekId` where the file records none. `check` sees the
   * entry first (and may refuse). Answers whether the file holds the KEK, and the owner it recorded before (undefined:
   * recorded now).
   */
  private recordOwner(
    kekId: string,
    keyspace: string,
    check: (entry: KeyringEntry | undefined) => void = () => {},
  ): Promise<{ held: boolean; before: string | undefined }> {
    return withLock(this.file, () => {
      const parsed = readKeyring(this.file);
      const entry = parsed.keks.find((k) => k.id === kekId);
      check(entry);
      if (entry === undefined || entry.owner !== undefined) return { held: entry !== undefined, before: entry?.owner };
      const keks = parsed.keks.map((k) => (k === entry ? { ...k, owner: keyspace } : k));
      writeKeyring(this.file, { ...parsed, keks }, 'replace');
      return { held: true, before: undefined };
    });
  }

  /** The refusal of a seed from KEK `entry` no keyspace owns, with its claim. */
  private unclaimed(entry: KeyringEntry, keyspace: string, why: string): KeyStoreRefusedError {
    const kekId = entry.id;
    const fingerprint = this.fingerprintOf(entry);
    return new KeyStoreRefusedError(
      `not seeding the registry of keyspace ${keyspace} with KEK '${kekId}': ${this.description} records no keyspace as its owner, and ${why}; another deployment on the same file may use the KEK. ` +
        `If the KEK is this keyspace's, claim it (with this keyspace's DATABASE_URL): rekey keys claim ${kekId} --fingerprint ${fingerprint}. If it is not, give this keyspace a keyring file of its own (REKEY_KEYRING_FILE)`,
    );
  }

  /**
   * Records the keyspace as the owner of every KEK the file records none for (written durably, as every write), but
   * an imported one (`rekey keys import`) only where `registry` records its key: another deployment's registry may
   * record it (test/adversary/file-keyring-unowned-shared.test.ts, finding 2).
   */
  async adopt(keyspace: string, registry: readonly RecordedKek[] = []): Promise<void> {
    const recorded = new Set(registry.filter((r) => r.state !== 'destroyed').map((r) => r.fingerprint));
    const takes = (k: KeyringEntry): boolean =>
      k.owner === undefined && (k.imported !== true || recorded.has(this.fingerprintOf(k)));
    await withLock(this.file, () => {
      const parsed = readKeyring(this.file);
      const taken = new Set(parsed.keks.filter(takes).map((k) => k.id));
      if (taken.size === 0) return;
      const keks = parsed.keks.map((k) => (taken.has(k.id) ? { ...k, owner: keyspace } : k));
      writeKeyring(this.file, { ...parsed, keks }, 'replace');
    });
  }

  /** The file holds rekey's own names only: nothing to claim. */
  claim(_provisioning: string, _registry: readonly RecordedKek[]): Promise<void> {
    return Promise.resolve();
  }

  /** The file keeps no mark of its own: the registry's is the record (`current` only seeds an empty registry). */
  promote(_from: string, _to: string, _registry: readonly RecordedKek[]): Promise<void> {
    return Promise.resolve();
  }

  /** The key stays in the file, readable, for the restore window. */
  retire(_kekId: string, _registry: readonly RecordedKek[]): Promise<void> {
    return Promise.resolve();
  }

  restore(kekId: string, registry: readonly RecordedKek[]): Promise<void> {
    this.requireHeldForRestore(kekId, registry);
    return Promise.resolve();
  }

  async provision(kekId: string, options: ProvisionOptions): Promise<void> {
    await this.generate(kekId, options);
  }

  /** Adds a new random KEK to the file (ids v1, v2, ... by default), owned by `options.owner` if given, and loads it. */
  private async generate(kekId?: string, options: ProvisionOptions = {}): Promise<string> {
    const updated = await withLock(this.file, () => {
      const parsed = readKeyring(this.file);
      const id = newKekId(
        kekId,
        parsed.keks.map((k) => k.id),
        this.file,
      );
      if (parsed.keks.some((k) => k.id === id)) {
        throw new KeyMaterialError(`${this.file} already holds a KEK '${id}'`, this.file);
      }
      parsed.keks.push({
        id,
        key: newKekText(),
        createdAt: new Date().toISOString(),
        ...(options.owner !== undefined && { owner: options.owner }),
      });
      parsed.current ??= id;
      writeKeyring(this.file, parsed, 'replace');
      return id;
    });
    await this.reload();
    return updated;
  }

  /**
   * Writes a KEK held elsewhere (`rekey keys import`) into the file under `kekId`, as its bytes: its fingerprint is
   * the same here. A KEK already there with these bytes is left as it is; another key under the id is refused.
   * `current` names it as current if the file names none yet.
   */
  /**
   * `rekey keys claim <id> --fingerprint <fp>`: records `keyspace` as the owner of the KEK the file holds under `kekId`
   * with that fingerprint, if it records none (for an application that cannot write the file at its first start).
   * Another keyspace's KEK is refused.
   */
  async claimKey(kekId: string, fingerprint: string, keyspace: string): Promise<'claimed' | 'already'> {
    const owner = await this.recordOwner(kekId, keyspace, (entry) => {
      if (entry === undefined) throw new UnknownKekError(kekId, this.description);
      const held = this.fingerprintOf(entry);
      if (held !== fingerprint) {
        throw new KekFingerprintMismatchError(
          kekId,
          fingerprint,
          held,
          `KEK '${kekId}' in ${this.description} is ${held}, not the ${fingerprint} given: rekey claims only the key named`,
        );
      }
    });
    if (owner.before === undefined) return 'claimed';
    if (owner.before === keyspace) return 'already';
    throw new KeyspaceMismatchError(
      `not claiming KEK '${kekId}': ${this.description} records keyspace ${owner.before} as its owner, and this is keyspace ${keyspace}. Give this keyspace a keyring file of its own (REKEY_KEYRING_FILE)`,
    );
  }

  async importKek(kekId: string, key: Buffer, options: { current: boolean }): Promise<'added' | 'present'> {
    const outcome = await withLock(this.file, () => {
      const parsed = readKeyring(this.file);
      const there = parsed.keks.find((k) => k.id === kekId);
      if (there) {
        const stored = decodeKek(there.key, `${this.file} (KEK '${kekId}')`);
        try {
          if (stored.length === key.length && timingSafeEqual(stored, key)) return 'present';
          throw new KekFingerprintMismatchError(kekId, kekFingerprint(stored), kekFingerprint(key));
        } finally {
          stored.fill(0);
        }
      }
      parsed.keks.push({
        id: kekId,
        key: key.toString('base64url'),
        createdAt: new Date().toISOString(),
        imported: true,
      });
      if (options.current) parsed.current ??= kekId;
      writeKeyring(this.file, parsed, 'replace');
      return 'added';
    });
    await this.reload();
    return outcome;
  }

  /**
   * Removes a KEK from the file for good (its restore window ended). Trusted by fingerprint, not by name: an entry
   * under the KEK's id that holds another key than the registry recorded (the file rebuilt by hand, the key another
   * KEK is served by) is refused, and stays.
   */
  async destroy(kekId: string, registry: readonly RecordedKek[] = []): Promise<DestroyOutcome> {
    const removed = await withLock(this.file, () => {
      const parsed = readKeyring(this.file);
      const entry = parsed.keks.find((k) => k.id === kekId);
      const recorded = registry.find((r) => r.kekId === kekId);
      if (entry !== undefined && recorded !== undefined) {
        const held = this.fingerprintOf(entry);
        if (held !== recorded.fingerprint) {
          throw new KekFingerprintMismatchError(
            kekId,
            recorded.fingerprint,
            held,
            `${this.file} holds the key ${held} under KEK '${kekId}', but the registry recorded ${recorded.fingerprint}: not removing it (another KEK may be served by that key). Give that key its own id in the file, or remove the entry yourself if nothing needs it`,
          );
        }
      }
      const kept = parsed.keks.filter((k) => k.id !== kekId);
      if (kept.length === parsed.keks.length) return false;
      // `current` only seeds an empty registry; it no longer names a KEK that is gone.
      const { current, ...rest } = parsed;
      writeKeyring(this.file, { ...rest, ...(current !== kekId && { current }), keks: kept }, 'replace');
      return true;
    });
    await this.reload();
    return {
      destroyed: true,
      detail: removed ? `removed from ${this.file}` : `already absent from ${this.file}`,
    };
  }
}

function readKeyring(file: string): KeyringFile {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch {
    throw new KeyMaterialError(`keyring ${file} does not exist: create it with 'rekey keys generate'`, file);
  }
  if ((stat.mode & 0o077) !== 0) {
    throw new KeyMaterialError(
      `keyring ${file} is readable by others (mode ${(stat.mode & 0o777).toString(8)}): run 'chmod 600 ${file}'`,
      file,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    // Not the parser's message: it quotes the text around the error, and this text holds keys.
    throw new KeyMaterialError(
      `keyring ${file} is not valid JSON: restore it from its backup (its content is not shown: it holds keys)`,
      file,
    );
  }
  const parsed = KeyringFile.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new KeyMaterialError(`keyring ${file} is malformed at '${issue?.path.join('.')}': ${issue?.message}`, file);
  }
  return parsed.data;
}

/**
 * Writes the keyring durably: a KEK that was registered and used must survive a crash, or every DEK wrapped with it
 * is lost. The text goes to a sibling with a name of its own (not the pid: every container is PID 1), is flushed to
 * disk, renamed over the keyring, and the directory is flushed so the rename itself survives. A failure removes the
 * sibling: no copy of the keys is left behind.
 */
function writeKeyring(file: string, contents: KeyringFile, mode: 'wx' | 'replace'): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const text = Buffer.from(`${JSON.stringify(contents, null, 2)}\n`);
  try {
    if (mode === 'wx') {
      writeDurably(file, text);
    } else {
      const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(8).toString('hex')}.tmp`);
      try {
        writeDurably(temp, text);
        fs.renameSync(temp, file);
      } catch (err) {
        fs.rmSync(temp, { force: true });
        throw err;
      }
    }
    syncDirectory(dir);
  } finally {
    text.fill(0);
  }
}

function writeDurably(file: string, text: Buffer): void {
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

async function withLock<T>(file: string, fn: () => T): Promise<T> {
  const lock = `${file}.lock`;
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: 'wx', mode: 0o600 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 100) {
        throw new KeyMaterialError(`cannot lock ${file} (remove ${lock} if no rekey process is running)`, file);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  try {
    return fn();
  } finally {
    fs.rmSync(lock, { force: true });
  }
}

/** The keyring file a process reads (REKEY_KEYRING_FILE, or --keyring), or a KeyMaterialError saying to name it. */
export function keyringFileOf(context: ProcessStoreContext): string {
  if (!context.keyringFile) {
    throw new KeyMaterialError('REKEY_KEYRING_FILE must name the keyring file', 'REKEY_KEYRING_FILE');
  }
  return context.keyringFile;
}

/** A keyring file by its real path (as given while it does not exist), as targets' stores are compared. */
export function fileStoreName(file: string): StoreName {
  let resolved = path.resolve(file);
  try {
    resolved = fs.realpathSync(resolved);
  } catch {
    // not there yet: its path as given
  }
  return { key: `file ${resolved}`, what: `the keyring file ${resolved}` };
}

/** REKEY_KEY_PROVIDER=file: the keyring file REKEY_KEYRING_FILE names, created if absent; `auto`'s fallback. */
export const fileStore: ProcessStore<'file'> = {
  value: 'file',
  auto: { order: 3, variables: [] },
  open: (context) => FileKeyring.open(keyringFileOf(context), { create: true }),
  reads: (env) => {
    const file = env.REKEY_KEYRING_FILE?.trim();
    return file ? [fileStoreName(file)] : [];
  },
};
