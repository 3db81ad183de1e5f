// What an operator sees in the Temporal Web UI, checked in a real browser: the dev server's own UI, a headless
// Chromium (found or installed by the setup), and a rotation paused mid-rewrap.
import fs from 'node:fs';
import path from 'node:path';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startRotation } from '../../src/client/rotations';
import { RekeyMetrics } from '../../src/observability/metrics';
import { TargetRuntimes } from '../../src/targets/runtime';
import { projectRoot } from '../../src/project-paths';
import { pauseUpdate, resumeUpdate, type RotationReport } from '../../src/workflows';
import { keyspaceIn, rotationIdIn } from '../helpers/keyspace';
import { RotationFixture, SLOW_ROTATION } from '../helpers/rotation-fixture';
import { eventually } from '../helpers/eventually';
import {
  createDevServerEnv,
  progressUntil,
  resultWithin,
  within,
  type OwnServerEnvironment,
} from '../helpers/temporal';

const SCREENSHOT = path.join(projectRoot, 'test-results', 'web-ui-rotation.png');

describe('the Temporal Web UI explains a rotation (headless Chromium)', () => {
  let env: OwnServerEnvironment;
  let browser: Browser | undefined;
  beforeAll(async () => {
    env = await createDevServerEnv({ ui: true });
  });
  afterAll(async () => {
    await browser?.close();
    await env?.teardown();
  });

  it('shows its summary, who started it, its progress and that it is paused, with the command that resumes it', async () => {
    const { chromium, chromiumMissing } = inject('toolchain');
    if (!chromium) throw new Error(`no browser for this test: ${chromiumMissing ?? 'the setup found no Chromium'}`);
    const fixture = await RotationFixture.create({ tenants: 6_000 });
    const workflowId = await rotationIdIn(fixture.db.pool);
    const request = SLOW_ROTATION;
    try {
      const worker = await fixture.worker(env);
      await worker.runUntil(async () => {
        const started = await startRotation(env.client, request, {
          taskQueue: fixture.taskQueue,
          keyspace: await keyspaceIn(fixture.db.pool),
          startedBy: 'rekey CLI',
        });
        const { handle } = started;
        await progressUntil(handle, (p) => p.counters.rewrapped > 0);
        await handle.executeUpdate(pauseUpdate);
        await progressUntil(handle, (p) => p.paused);

        // What the server holds: the starter's summary and details, and the workflow's current details.
        const description = await handle.describe();
        expect(await description.staticSummary()).toBe('rotate rekey: v1 → v2');
        expect(await description.staticDetails()).toContain('**Started by:** rekey CLI');
        const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
        expect(metadata.currentDetails).toMatch(/^\*\*Paused:\*\* rewrap · pass 1 · \*\*[\d.]+%\*\*/);
        expect(metadata.currentDetails).toContain(`To go on: \`rekey resume ${workflowId}\``);

        // What Prometheus scrapes from a worker meanwhile (the shipped dashboard and alert rules use these).
        const metrics = new RekeyMetrics();
        const targets = new TargetRuntimes({ db: fixture.db.pool, keys: fixture.keys });
        await targets.get('rekey');
        metrics.watch(targets, env.client);
        const scraped = await metrics.registry.metrics().finally(() => targets.close());
        const series = (name: string) =>
          new RegExp(`^${name}\\{[^}]*workflow_id="${workflowId}"[^}]*\\} (\\S+)$`, 'm').exec(scraped)?.[1];
        expect(series('rekey_rotation_paused')).toBe('1');
        expect(Number(series('rekey_rotation_progress_ratio'))).toBeGreaterThan(0);
        expect(Number(series('rekey_rotation_progress_ratio'))).toBeLessThan(1);
        expect(Number(series('rekey_rotation_phase_seconds'))).toBeGreaterThanOrEqual(0);
        expect(scraped).toMatch(/^rekey_kek_state\{target="rekey",kek_id="v2",state="active"\} 1$/m);

        // What the operator sees on the run's page.
        browser = await puppeteer.launch({
          executablePath: chromium,
          headless: true,
          args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
        });
        const page = await browser.newPage();
        await page.setViewport({ width: 1440, height: 1800 });
        await page.goto(`${env.uiUrl}/namespaces/default/workflows/${workflowId}`, {
          waitUntil: 'networkidle2',
          timeout: 30_000,
        });
        // The run's page has a tab for what the workflow and its starter say about it.
        await page.locator('::-p-text(User Metadata)').setTimeout(30_000).click();
        const visible = [
          'rotate rekey: v1 → v2',
          'Started by: rekey CLI',
          'Paused: rewrap',
          `rekey resume ${workflowId}`,
        ];
        // The markdown is rendered in frames of its own: read the page and every frame in it.
        const pageText = async () => {
          const texts = await Promise.all(
            page
              .frames()
              .map((frame) =>
                (frame.evaluate('document.body ? document.body.innerText : ""') as Promise<string>).catch(() => ''),
              ),
          );
          return texts.join('\n');
        };
        // Until the page shows all of it; the screenshot is kept either way, and a failure says what the page shows.
        let text = '';
        const missing = () => visible.filter((t) => !text.includes(t));
        try {
          await eventually(
            'the page showing the summary, the starter, the phase and the resume command',
            async () => {
              text = await within(pageText(), 10_000, () => 'the page did not answer');
              return missing().length === 0;
            },
            {
              within: 30_000,
              every: 250,
              describe: () =>
                `the page (screenshot: ${SCREENSHOT}) does not show ${JSON.stringify(missing())}; it shows:\n${text.slice(0, 3000)}`,
            },
          );
        } finally {
          fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
          await page.screenshot({ path: SCREENSHOT, fullPage: true });
        }
        expect(text).toMatch(/Paused before|Paused\. To go on/);

        await handle.executeUpdate(resumeUpdate);
        const result = await resultWithin<RotationReport>(handle);
        expect(result.outcome).toBe('completed');
      });
    } finally {
      await fixture.drop();
    }
  });
});
