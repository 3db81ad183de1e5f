import http from 'node:http';
import type { Client } from '@temporalio/client';
import { Counter, Gauge, Registry } from 'prom-client';
import type { RewrapCounters } from '../rewrap/counters';
import { PHASES } from '../rotation/progress';
import { targetKekStatus } from '../targets/kek-status';
import type { TargetRuntimes } from '../targets/runtime';
import { RekeyPhase } from '../workflows/search-attributes';
import { registerRotationGauges } from './rotation-gauges';
import { ConfigError } from '../errors';

/** rekey's own metrics; the worker's metrics endpoint serves them next to Temporal's. */
export class RekeyMetrics {
  readonly registry = new Registry();
  readonly rewrapped = new Counter({
    name: 'rekey_deks_rewrapped_total',
    help: 'DEKs rewrapped to a new KEK',
    registers: [this.registry],
  });
  readonly casConflicts = new Counter({
    name: 'rekey_cas_conflicts_total',
    help: 'Compare-and-swap races lost to a live writer during rewrap',
    registers: [this.registry],
  });
  readonly keyStoreRequests = new Counter({
    name: 'rekey_kms_requests_total',
    help: 'Calls made to a remote key store (AWS KMS, Vault), by operation and outcome',
    labelNames: ['operation', 'outcome'],
    registers: [this.registry],
  });
  readonly noticeFailures = new Counter({
    name: 'rekey_notice_failures_total',
    help: 'Attempts to deliver the webhook notice of a scheduled rotation that failed (the receiver refused or did not answer); each is tried again',
    labelNames: ['schedule_id', 'target'],
    registers: [this.registry],
  });
  readonly unreadable = new Counter({
    name: 'rekey_unreadable_deks_total',
    help: 'DEKs that did not unwrap during rewrap (left untouched), counted in the first pass that met them',
    registers: [this.registry],
  });

  /**
   * Adds what one batch did (the difference between two checkpoints). Unreadable rows are tried again by every pass:
   * only a first pass counts them (`countUnreadable`), so one bad row is one, however many passes there are.
   */
  recordBatch(before: RewrapCounters, after: RewrapCounters, countUnreadable = true): void {
    this.rewrapped.inc(Math.max(0, after.rewrapped - before.rewrapped));
    this.casConflicts.inc(Math.max(0, after.casConflicts - before.casConflicts));
    if (countUnreadable) this.unreadable.inc(Math.max(0, after.failed - before.failed));
  }

  /**
   * Gauges read at scrape time: rows per KEK (stale counts) of each target this worker has served, and the phase of
   * each running rotation.
   */
  watch(targets: TargetRuntimes, client?: Client): void {
    new Gauge({
      name: 'rekey_deks',
      help: 'Rows (DEKs, or secrets) wrapped by each KEK, per target',
      labelNames: ['target', 'kek_id', 'current'],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const runtime of await targets.openedRuntimes()) {
          const status = await targetKekStatus(runtime);
          for (const [kekId, n] of Object.entries(status.counts)) {
            this.set({ target: status.target, kek_id: kekId, current: String(kekId === status.currentKekId) }, n);
          }
        }
      },
    });
    if (!client) return;
    registerRotationGauges(this.registry, targets, client);
    new Gauge({
      name: 'rekey_rotation_phase',
      help: 'Running rotations by phase (1 = in this phase)',
      labelNames: ['workflow_id', 'phase'],
      registers: [this.registry],
      async collect() {
        this.reset();
        const query = `WorkflowType = 'rotateKek' AND ExecutionStatus = 'Running'`;
        for await (const execution of client.workflow.list({ query })) {
          const phase = execution.typedSearchAttributes.get(RekeyPhase) ?? 'validate';
          for (const p of PHASES) this.set({ workflow_id: execution.workflowId, phase: p }, p === phase ? 1 : 0);
        }
      },
    });
  }
}

/** Serves rekey's metrics and, appended, the Temporal SDK's own (scraped from the core's Prometheus endpoint). */
export function serveMetrics(
  metrics: RekeyMetrics,
  options: { port: number; host?: string; temporalMetricsUrl?: string },
) {
  const server = http.createServer((request, response) => {
    if (request.url !== '/metrics') {
      response.writeHead(404).end();
      return;
    }
    void (async () => {
      try {
        let body = await metrics.registry.metrics();
        if (options.temporalMetricsUrl) {
          const temporal = await fetch(options.temporalMetricsUrl)
            .then((r) => r.text())
            .catch(() => '');
          body += `\n${temporal}`;
        }
        response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body);
      } catch (err) {
        response.writeHead(500).end(String(err));
      }
    })();
  });
  const host = options.host ?? '127.0.0.1';
  return new Promise<http.Server>((resolve, reject) => {
    // A port in use (or an address this machine does not have) is the operator's to fix: one line naming the variable.
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new ConfigError(
          err.code === 'EADDRINUSE'
            ? `REKEY_METRICS_PORT=${options.port}: port ${options.port} on ${host} is in use by another process: set REKEY_METRICS_PORT to a free port (0 picks one)`
            : `REKEY_METRICS_HOST=${host}, REKEY_METRICS_PORT=${options.port}: /metrics cannot listen there (${err.code ?? err.message}): set them to an address of this machine and a free port`,
        ),
      ),
    );
    server.listen(options.port, host, () => resolve(server));
  });
}
