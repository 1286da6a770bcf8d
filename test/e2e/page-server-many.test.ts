// One `faultline page-server --keep-serving` serving 8 restores at once from two hosts: the server in
// network namespace fl-m-src (10.77.2.1), 4 restores (lazy-pages daemon in the namespace, restore
// target beside it) in fl-m-dst (10.77.2.2) and 4 in fl-m-dst2 (10.77.2.3), each host on a veth link
// of its own (scripts/netns.sh with FL_NETNS_HOSTS=3). The restoring side holds only the mm and
// pagemap images, so every page crosses a link; every restore verifies every page (assertRestored).
// The server runs with tighter bounds than its defaults, which these restores must never reach: no
// warning; and every connection ends with the restore's CLOSE (nothing is left behind).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, runRestore, startPageServer } from '../../src/target/run';
import { netnsWhy } from '../helpers/criu-restore';
import { BASE, assertRestored, makeImages, tempDir, withoutPages } from '../helpers/restore';

const NETNS = path.join(ROOT, 'scripts/netns.sh');
// A namespace set of our own: other remote tests run at the same time and take theirs down.
const ENV = { ...process.env, FL_NETNS: 'fl-m', FL_NETNS_NET: '10.77.2', FL_NETNS_HOSTS: '3' };
const SRC = ['ip', 'netns', 'exec', 'fl-m-src'];
const HOSTS = [
  { wrap: ['ip', 'netns', 'exec', 'fl-m-dst'], ip: '10.77.2.2' },
  { wrap: ['ip', 'netns', 'exec', 'fl-m-dst2'], ip: '10.77.2.3' },
];
const SRC_IP = '10.77.2.1';
const PER_HOST = 4;

const why = netnsWhy();

t.test('8 restores at once from two network namespaces against one page server', { skip: why && `network namespaces unavailable: ${why}` }, async (t) => {
  spawnSync('bash', [NETNS, 'down'], { env: ENV, stdio: 'ignore' });
  execFileSync('bash', [NETNS, 'up'], { env: ENV, stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => void spawnSync('bash', [NETNS, 'down'], { env: ENV, stdio: 'ignore' }));

  const dir = tempDir(t, 'ps-many');
  // Two processes of 2048 lazy pages (8 MiB) each: dense, and sparse (every 4th page, holes between).
  const full = makeImages(dir, {
    processes: [1, 2].map((pid) => ({
      pid,
      ppid: pid === 1 ? 0 : 1,
      regions: [
        { name: 'dense', start: BASE, pages: 1536, kind: 'dense' as const, seed: 30 + pid },
        { name: 'sparse', start: BASE + 0x1000_0000, pages: 2048, kind: 'sparse' as const, step: 4, seed: 40 + pid },
      ],
    })),
  });
  const local = withoutPages(full, dir);

  const server = await startPageServer(full, {
    address: SRC_IP,
    wrap: SRC,
    extra: ['-v3', '--max-connections', '20', '--max-outstanding-requests', '64', '--max-unsent-bytes', '32m', '--idle-timeout-ms', '60000'],
  });
  t.teardown(() => server.stop());

  let log = '';
  server.child.stderr!.on('data', (d: Buffer) => (log += String(d)));
  const count = (re: RegExp) => [...log.matchAll(re)].length;

  const t0 = Date.now();
  const runs = await Promise.all(
    Array.from({ length: HOSTS.length * PER_HOST }, (_, i) => {
      const host = HOSTS[i % HOSTS.length]!;
      // Half with a fault lane of their own (faultline's client), half on one connection (as criu's).
      const lanes = i % 4 < 2 ? 2 : 1;
      return runRestore({
        imagesDir: local,
        planImagesDir: full,
        workDir: path.join(dir, `r${i}`),
        daemonWrap: host.wrap,
        daemonArgs: ['--page-server', '--address', SRC_IP, '--port', String(server.port), '--lanes', String(lanes), '--workers', '1'],
        target: { pattern: 'random', fraction: 0.2, threads: 1, seed: i + 1 },
        timeoutMs: 90_000,
      });
    }),
  );
  const ms = Date.now() - t0;
  runs.forEach((r, i) => t.test(`restore ${i} from ${HOSTS[i % HOSTS.length]!.ip}`, async (t) => assertRestored(t, r, 2)));
  t.comment(`8 concurrent restores of 2 processes × 3584 pages over two veth links: ${ms} ms`);
  const lazy = runs[0]!.daemon.summary?.lazyPages ?? 0;
  t.ok(lazy > 0 && runs.every((r) => r.daemon.summary?.lazyPages === lazy && r.daemon.summary.pagesRequested >= lazy), 'every restore asked the server for all its lazy pages');

  // Per host: 2 restores with two connections, 2 with one.
  for (const h of HOSTS) {
    const peers = new Set([...log.matchAll(new RegExp(`page-server peer ${h.ip.replace(/\./g, '\\.')}:(\\d+): connected`, 'g'))].map((m) => m[1]));
    t.equal(peers.size, 6, `${h.ip} was served on all 6 of its connections`);
  }
  const deadline = Date.now() + 5000;
  while (count(/: disconnected/g) < 12 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.equal(count(/: CLOSE after \d+ request/g), 12, 'every connection ended with its restore\'s CLOSE');
  t.equal(count(/: disconnected/g), 12, 'and is gone');
  t.notMatch(log, /Warn|Error/, 'no restore reached a bound, nothing went wrong');
  await server.stop();
  t.match((await server.exit).stderr, /page server: SIGTERM: stopped after 12 connection\(s\), \d+ GETs, \d+ pages, 0 refused\n/);
});
