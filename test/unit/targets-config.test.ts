import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadTargetsConfig, parseTargetsConfig } from '../../src/targets/config';
import { MYCELIUM_PRESET, TALOS_PRESET } from '../../src/targets/presets';
import { TargetConfigError } from '../../src/errors';

const example = fs.readFileSync(path.join(__dirname, '..', '..', 'examples', 'rekey.yaml'), 'utf8');

function refusal(text: string): string {
  try {
    parseTargetsConfig(text, 'rekey.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(TargetConfigError);
    return (err as Error).message;
  }
  throw new Error('expected the configuration to be refused');
}

describe('targets configuration', () => {
  it('without a file, the presets rekey, mycelium and talos are there, and rekey is the default', () => {
    const config = loadTargetsConfig({});
    expect([...config.targets.keys()]).toEqual(['rekey', 'mycelium', 'talos']);
    expect(config.defaultTarget).toBe('rekey');
    expect(config.targets.get('mycelium')).toMatchObject({
      table: { schema: 'public', name: 'tenant' },
      id: 'id',
      label: { column: 'kek_version', kind: 'generation' },
      cas: { kind: 'stored-value' },
    });
    expect(config.targets.get('talos')).toMatchObject({
      table: { schema: 'public', name: 'secrets' },
      label: { column: 'key_id', kind: 'text' },
      cas: { kind: 'version', column: 'version' },
      setOnWrite: { rotated_at: 'now' },
    });
  });

  it("the README's complete example parses: a table of one's own, and a preset on another database", () => {
    const config = parseTargetsConfig(example, 'examples/rekey.yaml');
    expect(config.defaultTarget).toBe('billing');
    const billing = config.targets.get('billing')!;
    expect(billing).toMatchObject({
      database: { urlEnv: 'BILLING_DATABASE_URL' },
      table: { schema: 'billing', name: 'accounts' },
      id: 'account_id',
      label: { column: 'kek_id', kind: 'text' },
      cas: { kind: 'version', column: 'row_version' },
      setOnWrite: { rotated_at: 'now' },
      keys: { provider: 'env', prefix: 'BILLING' },
      currentKek: { owner: 'application', currentKekEnv: 'BILLING_CURRENT_KEK_ID' },
    });
    expect(billing.format.value).toEqual({
      kind: 'combined',
      column: 'wrapped_key',
      encoding: 'base64',
      prefix: 'k1:',
    });
    expect(config.targets.get('talos')).toEqual({ ...TALOS_PRESET, database: { urlEnv: 'TALOS_DATABASE_URL' } });
    // A preset on another database keeps everything else of the preset, its encrypted fields included.
    expect(config.targets.get('mycelium')).toEqual({
      ...MYCELIUM_PRESET,
      database: { urlEnv: 'MYCELIUM_DATABASE_URL' },
    });
    expect(config.targets.get('mycelium')!.fields).toHaveLength(5);
    expect(billing.fields).toEqual([
      {
        name: 'card_token',
        group: 'Card tokens',
        table: { schema: 'billing', name: 'payment_methods' },
        id: 'method_id',
        column: 'details',
        path: ['card', 'token'],
        tenant: { column: 'account_id' },
        legacy: { value: { kind: 'combined', column: 'value', encoding: 'base64' }, aad: { read: [[]] } },
        current: {
          value: { kind: 'combined', column: 'value', encoding: 'base64', prefix: 'f1:' },
          aad: { read: [[{ column: 'tenant' }, { text: ':card_token' }]] },
        },
      },
    ]);
  });

  it("names the key and what to fix in an encrypted field's description", () => {
    const field = (change: string) =>
      `targets:\n  mycelium:\n    fields:\n      - name: f\n        table: t\n        id: id\n        column: c\n        tenant: { column: tenant_id }\n        legacy: { value: { kind: combined, column: value, encoding: base64 }, aad: { read: [[]] } }\n${change}`;
    const current = (value: string, aad = '[[{ column: tenant }]]') =>
      `        current: { value: ${value}, aad: { read: ${aad} } }\n`;
    expect(refusal(field(current('{ kind: combined, column: value, encoding: base64 }')))).toBe(
      "rekey.yaml: targets.mycelium.fields.0.current.value.prefix is required: it tells a migrated value (such as 'v2:…') from a legacy one",
    );
    expect(refusal(field(current("{ kind: combined, column: value, encoding: base64, prefix: 'v2:' }", '[[]]')))).toBe(
      'rekey.yaml: targets.mycelium.fields.0.current.aad.read.0: a recipe needs at least one part',
    );
    expect(
      refusal(
        field(current("{ kind: combined, column: value, encoding: base64, prefix: 'v2:' }", '[[{ column: id }]]')),
      ),
    ).toBe(
      "rekey.yaml: targets.mycelium.fields.0.current.aad: a field's associated data can use the columns 'tenant' (the tenant id) and 'value', not 'id'",
    );
    expect(refusal(field(current("{ kind: combined, column: blob, encoding: base64, prefix: 'v2:' }")))).toBe(
      "rekey.yaml: targets.mycelium.fields.0.current.value: a field's value is one text: kind 'combined' over the column 'value'",
    );
    expect(refusal(field(`        tenant2: {}\n`))).toMatch(
      /targets\.mycelium\.fields\.0: Unrecognized key: "tenant2"/,
    );
    // What parses is a field the migration can use.
    const ok = parseTargetsConfig(field(current("{ kind: combined, column: value, encoding: base64, prefix: 'v2:' }")));
    expect(ok.targets.get('mycelium')!.fields).toMatchObject([
      { name: 'f', group: 'f', table: { schema: 'public', name: 't' } },
    ]);
  });

  it('names the key and what to fix for each mistake', () => {
    expect(refusal('targets:\n  billing:\n    id: account_id\n')).toBe(
      'rekey.yaml: targets.billing.table is required (or start from a preset: preset: rekey | mycelium | talos)',
    );
    expect(
      refusal(
        'targets:\n  talos:\n    preset: talos\n    format:\n      value: { kind: combined, column: v, encoding: base32 }\n      aad: { read: [[{ column: id }]] }\n',
      ),
    ).toBe('rekey.yaml: targets.talos.format.value.encoding: must be one of bytea, base64, base64url, hex');
    expect(refusal('targets:\n  talos:\n    preset: talos\n    tabel: secrets\n')).toMatch(
      /^rekey\.yaml: targets\.talos: Unrecognized key: "tabel"/,
    );
    expect(refusal('targets:\n  Billing:\n    preset: talos\n')).toMatch(
      /targets\.Billing: a target name is lower-case letters, digits, - and _/,
    );
    expect(refusal('targets:\n  x:\n    preset: talos\n    table: "public.secrets; DROP TABLE x"\n')).toBe(
      "rekey.yaml: targets.x.table: must be 'table' or 'schema.table' with plain SQL identifiers",
    );
    expect(refusal('defaultTarget: nope\ntargets: {}\n')).toBe(
      "rekey.yaml: defaultTarget 'nope' is not a target (known: rekey, mycelium, talos)",
    );
    expect(refusal('targets:\n  x:\n    preset: talos\n    keys: { provider: env, prefix: X, idPattern: "(" }\n')).toBe(
      'rekey.yaml: targets.x.keys.idPattern is not a regular expression',
    );
    expect(refusal('targets: [\n')).toMatch(/^rekey\.yaml is not valid YAML or JSON: /);
    expect(
      refusal(
        'targets:\n  x:\n    preset: talos\n    format:\n      value: { kind: combined, column: v, encoding: bytea, prefix: "v2:" }\n      aad: { read: [[{ column: id }]] }\n',
      ),
    ).toBe("rekey.yaml: targets.x.format: value.prefix 'v2:' must be hex bytes for a bytea column");
  });

  it('REKEY_CONFIG that cannot be read, and REKEY_DEFAULT_TARGET naming no target, are refused with the variable', () => {
    expect(() => loadTargetsConfig({ REKEY_CONFIG: '/nonexistent/rekey.yaml' })).toThrow(
      'REKEY_CONFIG names /nonexistent/rekey.yaml, which cannot be read: ENOENT',
    );
    expect(() => loadTargetsConfig({ REKEY_DEFAULT_TARGET: 'billing' })).toThrow(
      "REKEY_DEFAULT_TARGET names 'billing', which is not a target (known: rekey, mycelium, talos)",
    );
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'rekey-config-')), 'rekey.yaml');
    fs.writeFileSync(file, example);
    expect(loadTargetsConfig({ REKEY_CONFIG: file, REKEY_DEFAULT_TARGET: 'talos' }).defaultTarget).toBe('talos');
  });

  it('Finding 9: two targets over one table of one database are refused at load, naming both and what to change (talos-main beside the built-in talos)', () => {
    expect(refusal('targets:\n  talos-main:\n    preset: talos\n')).toBe(
      "rekey.yaml: targets 'talos' and 'talos-main' are one keyspace: both are table public.secrets in the database of variable DATABASE_URL. " +
        "Two registries and two rotations of one table would each move the other's rows: remove targets.talos-main, or give it its own table or database (database.urlEnv)",
    );
    // One database named two ways: the same URL, or two variables holding the same URL in this environment.
    const twoUrls =
      'targets:\n  talos:\n    database: { url: "postgres://db/app" }\n  talos-b:\n    preset: talos\n    database: { url: "postgres://db/app" }\n    keys: { provider: env, prefix: TALOSB }\n';
    expect(refusal(twoUrls)).toMatch(/^rekey\.yaml: targets 'talos' and 'talos-b' are one keyspace: .* the same URL/);
    const twoVariables =
      'targets:\n  talos-b:\n    preset: talos\n    database: { urlEnv: TALOS_B_URL }\n    keys: { provider: env, prefix: TALOSB }\n';
    expect(() =>
      parseTargetsConfig(twoVariables, 'rekey.yaml', {
        DATABASE_URL: 'postgres://db/app',
        TALOS_B_URL: 'postgres://db/app',
      }),
    ).toThrow(
      /targets 'talos' and 'talos-b' are one keyspace: both are table public\.secrets in the database of the same URL/,
    );
    // Another database (or another table) is another keyspace.
    expect(
      parseTargetsConfig(twoVariables, 'rekey.yaml', {
        DATABASE_URL: 'postgres://db/app',
        TALOS_B_URL: 'postgres://db/other',
      }).targets.has('talos-b'),
    ).toBe(true);
  });

  it("Finding 1: two targets whose KEKs come from one key store are refused at load, naming both, the store and what to change (orders with keys: default beside rekey's own)", () => {
    const orders = (keys: string) =>
      `targets:\n  orders:\n    preset: rekey\n    table: shop.orders\n    id: order_id\n    keys: ${keys}\n`;
    expect(refusal(orders('{ provider: default }'))).toBe(
      "rekey.yaml: targets 'rekey' and 'orders' both take their KEKs from the process's own key provider (keys: default): a key store belongs to one keyspace, " +
        'and destroying or retiring a KEK of one would take it from the other. Give targets.orders keys of its own ' +
        '(keys: { provider: file, file: <a keyring of its own> } or { provider: env, prefix: <a prefix of its own> })',
    );
    // The same env prefix as Talos's, and the same keyring file as another target's.
    expect(refusal(orders('{ provider: env, prefix: TALOS }'))).toMatch(
      /^rekey\.yaml: targets 'talos' and 'orders' both take their KEKs from the environment variables TALOS_KEK_<id>/,
    );
    const keyring = path.join(os.tmpdir(), 'rekey-shared-keyring.json');
    expect(
      refusal(
        `targets:\n  talos:\n    keys: { provider: file, file: ${keyring} }\n  orders:\n    preset: rekey\n    table: shop.orders\n    keys: { provider: file, file: ${keyring} }\n`,
      ),
    ).toContain(`targets 'talos' and 'orders' both take their KEKs from the keyring file ${keyring}`);
    // With the environment: what the process's own provider reads is that store too.
    const ownPrefix = orders('{ provider: env, prefix: REKEY }');
    expect(parseTargetsConfig(ownPrefix, 'rekey.yaml').targets.has('orders')).toBe(true);
    expect(() => parseTargetsConfig(ownPrefix, 'rekey.yaml', {})).toThrow(
      "targets 'rekey' and 'orders' both take their KEKs from the environment variables REKEY_KEK_<id>",
    );
    expect(() =>
      parseTargetsConfig(orders(`{ provider: file, file: ${keyring} }`), 'rekey.yaml', {
        REKEY_KEY_PROVIDER: 'file',
        REKEY_KEYRING_FILE: keyring,
      }),
    ).toThrow(`targets 'rekey' and 'orders' both take their KEKs from the keyring file ${keyring}`);
    // Keys of its own: accepted.
    expect(
      parseTargetsConfig(orders('{ provider: env, prefix: ORDERS }'), 'rekey.yaml', {}).targets.has('orders'),
    ).toBe(true);
  });
});
