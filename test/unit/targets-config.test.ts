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
    expect(config.targets.get('mycelium')).toEqual(MYCELIUM_PRESET);
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
});
