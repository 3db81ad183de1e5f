// Adversary of the native chunk rewrap (issue 27, native6): after a crypto thread rewraps a chunk, no plaintext DEK
// and no KEK it was given may be left in the process's memory: not after a chunk that went well, not after values that
// failed to open, not after a chunk that threw half-way. Read from the process's own memory (test/helpers/memory-scan):
// its own file, so that its process holds no other test's keys. The chunks run in this thread (rewrapChunk is what a
// crypto thread runs per task), so the scan sees every byte the rewrap touched.
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MYCELIUM_DEK_FORMAT, REKEY_DEK_FORMAT } from '../../src/codec/formats';
import type { SealedFormat } from '../../src/codec/sealed-format';
import { aesGcmBackend } from '../../src/crypto/aes-gcm';
import type { ByteColumn, Columns } from '../../src/crypto/columns';
import { rewrapChunk } from '../../src/crypto/rewrap-thread';
import { seal, uuidBytes } from '../helpers/gcm';
import { findInMemory, masked, part, type Masked } from '../helpers/memory-scan';
import { packed } from '../helpers/packed-columns';
import { wrapRekeyDek } from '../helpers/rekey-format';

interface Chunk {
  format: SealedFormat;
  rows: Columns;
  /** The DEKs the chunk holds, masked: those that open under `from` or `to`. */
  deks: Masked[];
}

/** A key as a crypto thread's task carries it (moved there), and masked for the scan. */
function kek(what: string): { buffer: () => ArrayBuffer; secret: Masked; bytes: Buffer } {
  const bytes = randomBytes(32);
  return {
    bytes,
    secret: masked(what, bytes),
    buffer: () => {
      const copy = new ArrayBuffer(32);
      new Uint8Array(copy).set(bytes);
      return copy;
    },
  };
}

const from = kek('the KEK `from`');
const to = kek('the KEK `to`');
const third = kek('a third KEK');

/**
 * Rows of rekey's own table: most under `from`, some already under `to` (relabelled), some under a third KEK or bound
 * to another tenant (they fail): every DEK that opens is one the rewrap held in the clear.
 */
function builtinChunk(count: number): Chunk {
  const deks: Masked[] = [];
  const tenants: string[] = [];
  const values: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const tenant = `tenant-${i}-${randomUUID()}`;
    const dek = randomBytes(32);
    const key = i % 9 === 4 ? third : i % 7 === 3 ? to : from;
    const kekId = key === to ? 'v2' : key === third ? 'v0' : 'v1';
    // Every 11th value is another tenant's: it does not open for this row.
    const boundTo = i % 11 === 5 ? `someone-else-${i}` : tenant;
    values.push(wrapRekeyDek(key.bytes, kekId, boundTo, dek));
    if (key !== third && boundTo === tenant) deks.push(masked(`tenant ${i}'s DEK`, dek));
    dek.fill(0);
    tenants.push(tenant);
  }
  return {
    format: REKEY_DEK_FORMAT,
    rows: {
      count,
      columns: {
        wrapped_dek: { kind: 'bytes', column: packed(values) },
        tenant_id: { kind: 'text', column: packed(tenants) },
      },
    },
    deks,
  };
}

/** Mycelium's tenants, the same mix, in its text form. */
function myceliumChunk(count: number): Chunk {
  const deks: Masked[] = [];
  const ids: string[] = [];
  const values: string[] = [];
  for (let i = 0; i < count; i++) {
    const id = randomUUID();
    const dek = randomBytes(32);
    const key = i % 9 === 4 ? third : i % 7 === 3 ? to : from;
    const boundTo = i % 11 === 5 ? randomUUID() : id;
    values.push(`v2:${seal(key.bytes, dek, uuidBytes(boundTo)).toString('base64')}`);
    if (key !== third && boundTo === id) deks.push(masked(`tenant ${i}'s DEK`, dek));
    dek.fill(0);
    ids.push(id);
  }
  return {
    format: MYCELIUM_DEK_FORMAT,
    rows: {
      count,
      columns: {
        encrypted_dek: { kind: 'text', column: packed(values) },
        id: { kind: 'text', column: packed(ids) },
      },
    },
    deks,
  };
}

function run(chunk: Chunk) {
  return rewrapChunk({
    format: chunk.format,
    from: { kekId: MYCELIUM(chunk) ? '1' : 'v1', key: from.buffer() },
    to: { kekId: MYCELIUM(chunk) ? '2' : 'v2', key: to.buffer() },
    rows: chunk.rows,
    options: { others: false, dryRun: false },
  });
}
const MYCELIUM = (chunk: Chunk) => chunk.format === MYCELIUM_DEK_FORMAT;

/** What the scan looks for: each DEK whole and by halves (one AES block of it is enough to guess the rest). */
const dekSecrets = (chunk: Chunk) =>
  chunk.deks.flatMap((d) => [d, part(d, 0, 16, `${d.what} (first half)`), part(d, 16, 32, `${d.what} (second half)`)]);
const kekSecrets = [from.secret, to.secret, third.secret].flatMap((k) => [
  k,
  part(k, 0, 16, `${k.what} (first half)`),
  part(k, 16, 32, `${k.what} (second half)`),
]);

describe('native6 adversary: a rewrapped chunk leaves no DEK and no KEK in the worker', () => {
  // The fixture's own KEK bytes are kept until the end (the rows are sealed with them); the scan looks for the KEKs
  // only once they are gone.
  it('the scan finds a DEK that is still in memory (it can see the heap the rewrap uses)', () => {
    expect(aesGcmBackend().name, 'npm run setup builds the native AES-GCM addon').toBe('native');
    const dek = randomBytes(32);
    const secret = masked('a live DEK', dek);
    expect(findInMemory([secret]).found.map((f) => f.what)).toContain('a live DEK');
    dek.fill(0);
    expect(findInMemory([secret]).found).toEqual([]);
  });

  it("after a chunk of rekey's format (values opened, relabelled, failed) no plaintext DEK is anywhere in the process", () => {
    const chunk = builtinChunk(300);
    expect(findInMemory(dekSecrets(chunk)).found, 'no DEK in memory before the rewrap').toEqual([]);
    const result = run(chunk);
    expect(result.indexes.length).toBe(chunk.deks.length);
    expect(result.failures.length).toBe(300 - chunk.deks.length);
    expect(findInMemory(dekSecrets(chunk)).found).toEqual([]);
  });

  it("after a chunk of Mycelium's text format no plaintext DEK is anywhere in the process", () => {
    const chunk = myceliumChunk(300);
    expect(findInMemory(dekSecrets(chunk)).found, 'no DEK in memory before the rewrap').toEqual([]);
    const result = run(chunk);
    expect(result.indexes.length).toBe(chunk.deks.length);
    expect(findInMemory(dekSecrets(chunk)).found).toEqual([]);
  });

  it('after a chunk that throws half-way (a packed column shorter than the chunk) no DEK it had opened is left', () => {
    for (const chunk of [builtinChunk(60), myceliumChunk(60)]) {
      // The associated data's column ends at row 40: rows 0 to 39 are opened before the chunk meets it.
      const name = MYCELIUM(chunk) ? 'id' : 'tenant_id';
      const column = chunk.rows.columns[name] as { kind: 'text'; column: ByteColumn };
      let bytes = 0;
      for (let i = 0; i < 40; i++) bytes += column.column.lengths[i]!;
      column.column = { lengths: column.column.lengths.slice(0, 40), bytes: column.column.bytes.slice(0, bytes) };
      let threw: unknown;
      try {
        run(chunk);
      } catch (err) {
        threw = err;
      }
      // Whether it refuses the chunk or fails the rows it cannot bind, no DEK stays behind.
      void threw;
      expect(findInMemory(dekSecrets(chunk)).found).toEqual([]);
    }
  });

  it('after the chunks, neither KEK a task brought (nor its key schedule halves) is anywhere in the process', () => {
    run(builtinChunk(50));
    run(myceliumChunk(50));
    for (const k of [from, to, third]) k.bytes.fill(0);
    expect(findInMemory(kekSecrets).found).toEqual([]);
  });
});
