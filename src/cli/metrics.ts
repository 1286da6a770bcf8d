// Prometheus metrics of a lazy restore (`--metrics`): prom-client's exposition, on a loopback
// address or a unix socket only (the metrics name processes and sizes of a checkpoint; nothing here
// needs to leave the host). Everything is read at scrape time from the restore's live progress
// (protocol/progress.ts); nothing is counted twice.
import * as http from 'node:http';
import * as fs from 'node:fs';
import type { Registry as PromRegistry } from 'prom-client';
import { FAULT_BUCKETS_S, type Progress } from '../protocol/progress';
import { UsageError } from './usage-error';

type RestoreProgress = Progress & { processes: number; restoreFinished: boolean };

/** What a scrape reports: each restore with its labels, and (an engine) how many run and wait. */
export interface MetricsSnapshot {
  restores: { labels: Record<string, string>; progress: RestoreProgress }[];
  active?: number;
  queued?: number;
}

export type MetricsAddress = { host: string; port: number } | { path: string };

/** `127.0.0.1:9464`, `[::1]:9464`, `localhost:0`, or `unix:/run/faultline.metrics` (an absolute path). */
export function parseMetricsAddress(v: string): MetricsAddress {
  if (v.startsWith('unix:') || v.startsWith('/')) {
    const p = v.startsWith('unix:') ? v.slice(5) : v;
    if (!p.startsWith('/')) throw new UsageError(`--metrics ${v}: a unix socket needs an absolute path`);
    return { path: p };
  }
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(v);
  if (!m || Number(m[3]) > 65535) throw new UsageError(`--metrics ${v}: expected HOST:PORT on a loopback address, or unix:/PATH`);
  const host = m[1] ?? m[2]!;
  if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(host)) throw new UsageError(`--metrics ${v}: ${host} is not a loopback address (the metrics describe a checkpoint: serve them on 127.0.0.1, ::1 or a unix socket)`);
  return { host, port: Number(m[3]) };
}

export interface MetricsServer {
  /** Where it listens: http://127.0.0.1:PORT/metrics, or the unix socket's path. */
  url: string;
  close(): Promise<void>;
}

export async function serveMetrics(at: MetricsAddress, snapshot: () => MetricsSnapshot): Promise<MetricsServer> {
  // Loaded only with --metrics: start-up CPU is counted (docs/startup.md).
  const prom = require('prom-client') as typeof import('prom-client');
  const registry: PromRegistry = new prom.Registry();
  prom.collectDefaultMetrics({ register: registry, prefix: 'faultline_daemon_' });
  let last = snapshot();
  const LABELS = ['images_dir', 'work_dir'];
  const gauge = (name: string, help: string, value: (p: RestoreProgress) => number) =>
    new prom.Gauge({ name, help, labelNames: LABELS, registers: [registry], collect() {
      this.reset();
      for (const r of last.restores) this.set(r.labels, value(r.progress));
    } });
  const counter = (name: string, help: string, labelNames: string[], values: (p: RestoreProgress) => [Record<string, string>, number][]) =>
    new prom.Counter({ name, help, labelNames: [...labelNames, ...LABELS], registers: [registry], collect() {
      this.reset();
      for (const r of last.restores) for (const [l, v] of values(r.progress)) this.inc({ ...l, ...r.labels }, v);
    } });
  // First of all collectors: one consistent reading per scrape.
  new prom.Gauge({ name: 'faultline_restore_processes', help: 'restored processes still being served', labelNames: LABELS, registers: [registry], collect() {
    last = snapshot();
    this.reset();
    for (const r of last.restores) this.set(r.labels, r.progress.processes);
  } });
  new prom.Gauge({ name: 'faultline_restores_active', help: 'restores being served', registers: [registry], collect() {
    this.set(last.active ?? last.restores.length);
  } });
  new prom.Gauge({ name: 'faultline_restores_queued', help: 'restores waiting for room in the engine (--max-restores, --max-memory)', registers: [registry], collect() {
    this.set(last.queued ?? 0);
  } });
  gauge('faultline_restore_finished', '1 once the restorer handed everything over (the background fill runs from then on)', (p) => (p.restoreFinished ? 1 : 0));
  gauge('faultline_restore_pages_done', 'lazy pages in place: copied by a fault or the fill, zero-filled, or found present', (p) => p.done);
  gauge('faultline_restore_pages', 'lazy pages in all (grows when a fork gives a child its parent\'s missing pages)', (p) => p.total);
  counter('faultline_pages_total', 'pages put in place, by what put them there', ['by'], (p) => [[{ by: 'fault' }, p.faultPages], [{ by: 'fill' }, p.fillPages], [{ by: 'zero' }, p.zeroPages]]);
  counter('faultline_faults_total', 'page faults served', [], (p) => [[{}, p.faults]]);
  // The fault-service histogram comes counted per bucket from the workers: exposed as is.
  const name = 'faultline_fault_service_seconds';
  registry.registerMetric({
    name,
    help: 'page fault read from the uffd → the faulting thread released',
    type: 'histogram',
    aggregator: 'sum',
    get: async () => {
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
      for (const { labels, progress: p } of last.restores) {
        let cumulative = 0;
        FAULT_BUCKETS_S.forEach((le, b) => {
          cumulative += p.faultBuckets[b]!;
          values.push({ labels: { le, ...labels }, value: cumulative, metricName: `${name}_bucket` });
        });
        cumulative += p.faultBuckets[FAULT_BUCKETS_S.length]!;
        values.push({ labels: { le: '+Inf', ...labels }, value: cumulative, metricName: `${name}_bucket` });
        values.push({ labels, value: p.faultSeconds, metricName: `${name}_sum` });
        values.push({ labels, value: cumulative, metricName: `${name}_count` });
      }
      return { name, help: 'page fault read from the uffd → the faulting thread released', type: 'histogram', aggregator: 'sum', values };
    },
    reset: () => undefined,
  } as unknown as Parameters<PromRegistry['registerMetric']>[0]);

  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404).end('faultline: scrape /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (e: Error) => res.writeHead(500).end(`${e.message}\n`),
    );
  });
  server.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(Object.assign(new Error(`--metrics: cannot listen on ${'path' in at ? at.path : `${at.host}:${at.port}`}: ${e.code ?? e.message}`), { code: 'EMETRICS' })));
    if ('path' in at) {
      fs.rmSync(at.path, { force: true });
      server.listen(at.path, () => {
        fs.chmodSync(at.path, 0o600);
        resolve();
      });
    } else server.listen(at.port, at.host, resolve);
  });
  const addr = server.address();
  const url = 'path' in at ? at.path : typeof addr === 'object' && addr ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}/metrics` : '';
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        if ('path' in at) fs.rmSync(at.path, { force: true });
      }),
  };
}
