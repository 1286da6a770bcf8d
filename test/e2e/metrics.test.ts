// Prometheus metrics of a restore (issue 11): `--metrics` on a loopback address or a unix socket,
// scraped while a real restore runs; the numbers move and agree with the daemon's own summary.
import t from 'tap';
import * as http from 'node:http';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { CLI, runRestore } from '../../src/target/run';
import { MiB, assertRestored, denseTree, makeImages, tempDir } from '../helpers/restore';
import { freePort } from '../helpers/criu-restore';

function scrape(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const opts = url.startsWith('/') ? { socketPath: url, path: '/metrics' } : url;
    http.get(opts, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve(body));
    }).on('error', reject);
  });
}

function value(text: string, metric: string): number | undefined {
  const m = new RegExp(`^${metric.replace(/[{}"=+]/g, (c) => `\\${c}`)}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

for (const where of ['tcp', 'unix'] as const) {
  t.test(`metrics scraped during a restore (${where})`, async (t) => {
    const dir = tempDir(t, `metrics-${where}`);
    const images = makeImages(dir, denseTree(2, 96 * MiB));
    const port = await freePort();
    const at = where === 'tcp' ? `127.0.0.1:${port}` : `unix:${path.join(dir, 'metrics.sock')}`;
    const url = where === 'tcp' ? `http://127.0.0.1:${port}/metrics` : path.join(dir, 'metrics.sock');
    const scrapes: string[] = [];
    let ended = false;
    // One scrape at a time, in order, as Prometheus does.
    const poll = async () => {
      while (!ended) {
        await scrape(url).then((s) => scrapes.push(s), () => undefined);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    let polling: Promise<void> | undefined;
    const r = await runRestore({
      imagesDir: images,
      workDir: path.join(dir, 'w'),
      // one worker, small fill copies: the restore lasts long enough for several scrapes
      daemonArgs: ['--workers', '1', '--fill-chunk', '4', '--metrics', at],
      target: { pattern: 'random', fraction: 0.3, seed: 9 },
      // from readiness on: the metrics listen before the daemon says it is ready
      onStarted: () => (polling = poll()),
    });
    ended = true;
    await polling;
    assertRestored(t, r, 2);
    t.match(r.daemon.stderr, `metrics on ${url}`, 'it said where, on stderr');
    t.ok(scrapes.length >= 2, `${scrapes.length} scrapes during the restore`);
    const last = scrapes.at(-1) ?? '';
    for (const m of ['faultline_restore_processes', 'faultline_restore_pages_done', 'faultline_restore_pages', 'faultline_faults_total', 'faultline_fault_service_seconds_count', 'faultline_daemon_process_resident_memory_bytes']) {
      t.not(value(last, m), undefined, `${m} is exported`);
    }
    t.match(last, /faultline_pages_total\{by="fill",images_dir="[^"]+",work_dir="[^"]+"\} \d+/, 'pages by fill, labelled with the restore');
    t.match(last, /faultline_fault_service_seconds_bucket\{le="0\.001",/, 'a fault-service histogram');
    const done = scrapes.map((s) => value(s, 'faultline_restore_pages_done') ?? 0);
    t.ok(done.every((d, i) => i === 0 || d >= done[i - 1]!), `pages done never goes back: ${done.join(' ')}`);
    t.ok(done.at(-1)! > done[0]! || done[0] === value(last, 'faultline_restore_pages'), `pages done moved: ${done[0]} → ${done.at(-1)}`);
    const total = value(last, 'faultline_restore_pages')!;
    t.ok(total <= 2 * 96 * MiB && total > 0, `lazy pages in all: ${total}`);
    const faults = value(last, 'faultline_faults_total')!;
    t.ok(faults <= (r.daemon.summary?.faults ?? Infinity), `faults so far (${faults}) within the summary's ${r.daemon.summary?.faults}`);
  });
}

t.test('--metrics refuses an address that is not loopback, in one line', async (t) => {
  const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', '/nonexistent', '--metrics', '0.0.0.0:9464'], { encoding: 'utf8' });
  t.equal(r.status, 2, 'exit 2');
  t.match(r.stderr, /^faultline: error: --metrics 0\.0\.0\.0:9464: 0\.0\.0\.0 is not a loopback address/, r.stderr);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
});
