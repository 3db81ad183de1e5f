import { describe, expect, it } from 'vitest';
import { KekRegistry } from '../../src/store/kek-registry';
import { BUILTIN_TARGET } from '../../src/targets/builtin';
import { useTestDatabase } from '../helpers/database';

describe('KEK registry', () => {
  const db = useTestDatabase();
  const registry = () => new KekRegistry(db.pool, BUILTIN_TARGET);
  let n = 0;
  const id = (label: string) => `${label}-${n++}`;

  it('the database itself refuses a second active KEK in one target, and each target has its own', async () => {
    const insert = (target: string, kekId: string) =>
      db.pool.query(`INSERT INTO rekey.keks (target, kek_id, state, fingerprint) VALUES ($1, $2, 'active', 'kcv1:a')`, [
        target,
        kekId,
      ]);
    await insert('rekey', 'one');
    await expect(insert('rekey', 'two')).rejects.toThrow(/keks_one_active_per_target/);
    await insert('talos', 'one');
    expect((await new KekRegistry(db.pool, 'talos').active())?.kekId).toBe('one');
    expect(await new KekRegistry(db.pool, 'mycelium').active()).toBeUndefined();
    await db.pool.query(`DELETE FROM rekey.kek_events`);
    await db.pool.query(`DELETE FROM rekey.keks`);
  });

  it('promote makes the new KEK active and the old one decrypt-only, and is idempotent', async () => {
    const [from, to] = [id('from'), id('to')];
    await registry().seedActive(from, 'kcv1:from');
    await registry().register(to, 'kcv1:to');
    await registry().promote(from, to);
    await registry().promote(from, to);
    expect((await registry().require(from)).state).toBe('decrypt_only');
    const promoted = await registry().require(to);
    expect(promoted.state).toBe('active');
    expect(promoted.activatedAt).toBeInstanceOf(Date);
    expect((await registry().active())?.kekId).toBe(to);
    await registry().transition(from, 'retired');
    await registry().transition(to, 'decrypt_only');
  });

  it('a retired KEK cannot come back', async () => {
    const kek = id('old');
    await registry().register(kek, 'kcv1:old');
    await registry().transition(kek, 'retired');
    await expect(registry().transition(kek, 'active')).rejects.toThrow(
      /only restored \(to decrypt_only, within its window\) or destroyed/,
    );
    expect((await registry().require(kek)).state).toBe('retired');
  });

  it('the active KEK cannot be retired', async () => {
    const kek = id('live');
    await registry().seedActive(kek, 'kcv1:live');
    await expect(registry().transition(kek, 'retired')).rejects.toThrow(/cannot go from active to retired/);
    expect((await registry().require(kek)).state).toBe('active');
    await registry().transition(kek, 'decrypt_only');
  });

  it('promote refuses when the old KEK is not the active one', async () => {
    const [from, to] = [id('stale'), id('next')];
    await registry().register(from, 'kcv1:x');
    await registry().register(to, 'kcv1:y');
    await expect(registry().promote(from, to)).rejects.toThrow(`'${from}' is provisioned, not the active KEK`);
    expect((await registry().require(to)).state).toBe('provisioned');
  });

  it('registering a known id with a different key is refused', async () => {
    const kek = id('dup');
    await registry().register(kek, 'kcv1:first');
    await expect(registry().register(kek, 'kcv1:second')).rejects.toThrow(/this is a different key/);
  });
});
