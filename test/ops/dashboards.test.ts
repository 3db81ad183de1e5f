// The Grafana dashboard and the Prometheus alert rules shipped in ops/: valid (promtool, and the dashboard's shape),
// each alert raised by the series that should raise it (promtool's rule tests), and every metric they name one that
// a rekey worker serves (its /metrics, watching a real dev server and PostgreSQL).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { RekeyMetrics } from '../../src/observability/metrics';
import { projectRoot } from '../../src/project-paths';
import { TargetRuntimes } from '../../src/targets/runtime';
import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { testKeys } from '../helpers/keys';
import { createDevServerEnv } from '../helpers/temporal';

const ops = path.join(projectRoot, 'ops');
const dashboard = JSON.parse(fs.readFileSync(path.join(ops, 'grafana', 'rekey.json'), 'utf8')) as unknown;
const rules = parse(fs.readFileSync(path.join(ops, 'prometheus', 'rekey-alerts.yml'), 'utf8')) as {
  groups: { rules: { alert: string; expr: string }[] }[];
};

function promtool(...args: string[]): Promise<{ code: number; output: string }> {
  const { promtool: binary, promtoolMissing } = inject('toolchain');
  if (!binary) throw new Error(`no promtool for this test: ${promtoolMissing ?? 'the setup found none'}`);
  return new Promise((resolve) => {
    execFile(binary, args, { cwd: path.join(ops, 'prometheus'), timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code ?? 1) : 0, output: stdout + stderr }),
    );
  });
}

/** What Grafana needs of a dashboard to import it, and what this one promises: a query per panel, on the picked source. */
const Dashboard = z.object({
  uid: z.string().min(1),
  title: z.string().min(1),
  schemaVersion: z.number().int(),
  templating: z.object({ list: z.array(z.object({ name: z.literal('datasource'), type: z.literal('datasource') })) }),
  panels: z
    .array(
      z.object({
        id: z.number().int(),
        title: z.string().min(1),
        description: z.string().min(20),
        type: z.enum(['timeseries', 'stat', 'bargauge', 'table']),
        datasource: z.object({ type: z.literal('prometheus'), uid: z.literal('${datasource}') }),
        gridPos: z.object({ x: z.number().min(0), y: z.number().min(0), w: z.number().min(1), h: z.number().min(1) }),
        targets: z.array(z.object({ refId: z.string(), expr: z.string().min(1) })).min(1),
      }),
    )
    .min(1),
});

const metricNames = (expressions: string[]) =>
  [...new Set(expressions.flatMap((e) => [...e.matchAll(/\b(rekey_[a-z0-9_]+)\b/g)].map((m) => m[1]!)))].sort();

describe('ops/: the Grafana dashboard and the Prometheus alert rules', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let targets: TargetRuntimes;
  beforeAll(async () => {
    env = await createDevServerEnv();
    db = await createTestDatabase();
    targets = new TargetRuntimes({ db: db.pool, keys: testKeys(['v1']) });
  });
  afterAll(async () => {
    await targets?.close();
    await db?.drop();
    await env?.teardown();
  });

  it('the alert rules pass promtool check rules, and each alert fires on its series and not before (promtool test rules)', async () => {
    const check = await promtool('check', 'rules', 'rekey-alerts.yml');
    expect(check.output).toContain(`SUCCESS: ${rules.groups.flatMap((g) => g.rules).length} rules found`);
    expect(check.code).toBe(0);
    const test = await promtool('test', 'rules', 'rekey-alerts.test.yml');
    expect(test.output).toContain('SUCCESS');
    expect(test.code).toBe(0);
  });

  it('the dashboard has what Grafana needs to import it; its panels do not overlap', () => {
    const parsed = Dashboard.parse(dashboard);
    expect(new Set(parsed.panels.map((p) => p.id)).size).toBe(parsed.panels.length);
    for (const a of parsed.panels) {
      expect(a.gridPos.x + a.gridPos.w).toBeLessThanOrEqual(24);
      for (const b of parsed.panels) {
        if (a === b) continue;
        const apart =
          a.gridPos.x + a.gridPos.w <= b.gridPos.x ||
          b.gridPos.x + b.gridPos.w <= a.gridPos.x ||
          a.gridPos.y + a.gridPos.h <= b.gridPos.y ||
          b.gridPos.y + b.gridPos.h <= a.gridPos.y;
        expect(apart, `${a.title} overlaps ${b.title}`).toBe(true);
      }
    }
  });

  it('every metric the dashboard and the rules name is one a rekey worker serves', async () => {
    const metrics = new RekeyMetrics();
    metrics.watch(targets, env.client);
    const exposition = await metrics.registry.metrics();
    const served = new Set([...exposition.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
    const named = metricNames([
      ...Dashboard.parse(dashboard).panels.flatMap((p) => p.targets.map((t) => t.expr)),
      ...rules.groups.flatMap((g) => g.rules.map((r) => r.expr)),
    ]);
    expect(named.length).toBeGreaterThanOrEqual(12);
    expect(named.filter((name) => !served.has(name))).toEqual([]);
  });
});
