// Remote lazy restore between two test hosts: network namespaces fl-src (page server) and fl-dst
// (lazy-pages daemon) joined by a veth pair (scripts/netns.sh). The restoring side holds only mm and
// pagemap images; every page crosses the link. Then the same over an emulated WAN link, and the
// failures: a server that dies mid-restore, one not up yet, one that answers wrongly, and TLS.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ROOT, runRestore, startPageServer, type RestoreRunOptions } from '../../src/target/run';
import { freePort } from '../helpers/criu-restore';
import { BASE, MiB, assertRestored, assertStopped, makeImages, tempDir, withoutPages } from '../helpers/restore';

const NETNS = path.join(ROOT, 'scripts/netns.sh');
const SRC = ['ip', 'netns', 'exec', 'fl-src'];
const DST = ['ip', 'netns', 'exec', 'fl-dst'];
const SRC_IP = '10.77.0.1';

const check = spawnSync('bash', [NETNS, 'check'], { encoding: 'utf8' });
const netnsWhy = check.status === 0 ? '' : check.stderr.trim() || `scripts/netns.sh check exited ${check.status}`;

/** A tree of three processes with `pagesEach` pages (dense + sparse); returns the full set and a restoring-side copy without pages files. */
function images(t: Test, name: string, pagesEach: number): { full: string; local: string; dir: string } {
  const dir = tempDir(t, name);
  const full = makeImages(dir, {
    processes: [1, 2, 3].map((pid) => ({
      pid,
      ppid: pid === 1 ? 0 : 1,
      regions: [
        { name: 'dense', start: BASE, pages: pagesEach - 1024, kind: 'dense' as const, seed: 50 + pid },
        { name: 'sparse', start: BASE + 0x1000_0000, pages: 1024, kind: 'sparse' as const, step: 4, seed: 60 + pid },
      ],
    })),
  });
  const local = withoutPages(full, dir);
  return { full, local, dir };
}

function remoteRun(im: { full: string; local: string; dir: string }, extra: Partial<RestoreRunOptions>): RestoreRunOptions {
  return { imagesDir: im.local, planImagesDir: im.full, workDir: path.join(im.dir, 'work'), target: { pattern: 'random', fraction: 0.2, threads: 2 }, timeoutMs: 120_000, ...extra };
}

t.test('between two network namespaces', { skip: netnsWhy && `network namespaces unavailable: ${netnsWhy}` }, async (t) => {
  execFileSync('bash', [NETNS, 'up']);
  t.teardown(() => void spawnSync('bash', [NETNS, 'down']));

  t.test('a 3-process, 288 MiB tree restored over the veth link, two lanes, every page verified', async (t) => {
    const im = images(t, 'remote', 96 * MiB);
    const server = await startPageServer(im.full, { address: SRC_IP, wrap: SRC });
    t.teardown(() => server.stop());
    const r = await runRestore(remoteRun(im, { daemonWrap: DST, daemonArgs: ['--page-server', '--address', SRC_IP, '--port', String(server.port), '--lanes', '2'] }));
    assertRestored(t, r, 3);
    t.ok(r.daemon.summary!.pagesByFault > 0 && r.daemon.summary!.pagesByFill > 0, `pages by fault ${r.daemon.summary!.pagesByFault}, by fill ${r.daemon.summary!.pagesByFill}`);
    t.equal(r.daemon.summary!.lazyPages, 3 * (96 * MiB - 1024 + 256), "every lazy page of the three processes");
    // Nothing forks, moves or unmaps here: a page asked twice is a reply whose copy gave up and was
    // asked again. That may happen to a few under load (the copy gate held by a preempted drain), but
    // a copy that gave up whenever a drain was waiting once tripled the remote restore's time.
    const s = r.daemon.summary!;
    // (0 asked again in most runs; 0.14 % once, on a machine busy with a build)
    t.ok(s.pagesRequested >= s.lazyPages && s.pagesRequested <= s.lazyPages * 1.003, `pages asked of the page server: ${s.pagesRequested} for ${s.lazyPages} lazy pages (at most 0.3 % asked again; that regression asked 0.57 % again here)`);
  });

  t.test('over an emulated WAN link: 200 Mbit/s (tc tbf) and +2 ms each way (delay relay), one lane', async (t) => {
    execFileSync('bash', [NETNS, 'up', '200mbit']);
    t.teardown(() => void spawnSync('bash', [NETNS, 'up']));
    const im = images(t, 'wan', 8 * MiB);
    const server = await startPageServer(im.full, { address: SRC_IP, wrap: SRC });
    t.teardown(() => server.stop());
    const relay = spawnRelay(`${SRC_IP}:0`, `${SRC_IP}:${server.port}`, 2);
    t.teardown(() => relay.child.kill('SIGTERM'));
    const port = await relay.port;
    const r = await runRestore(remoteRun(im, { daemonWrap: DST, daemonArgs: ['--page-server', '--address', SRC_IP, '--port', String(port)] }));
    assertRestored(t, r, 3);
    t.comment(`emulated link: restored in ${r.daemon.summary?.timeToRestoredMs.toFixed(0)} ms, ${r.daemon.summary?.faults} faults`);
  });

  t.test('the page server dies mid-restore: the tree is stopped, nothing reads zeros', async (t) => {
    const im = images(t, 'die', 64 * MiB);
    const server = await startPageServer(im.full, { address: SRC_IP, wrap: SRC });
    let killed = false;
    const r = await runRestore(
      remoteRun(im, {
        daemonWrap: DST,
        daemonArgs: ['--page-server', '--address', SRC_IP, '--port', String(server.port), '-v4'],
        target: { pattern: 'seq', fraction: 1, threads: 1 },
        onDaemonStderr: (chunk) => {
          if (!killed && chunk.includes('restore finished')) {
            killed = true;
            server.child.kill('SIGKILL');
          }
        },
      }),
    );
    t.ok(killed, 'page server killed after RESTORE_FINISHED');
    assertStopped(t, r, /page server 10\.77\.0\.1:\d+.*(closed|ECONNRESET|EPIPE|unanswered)/);
  });

  t.test('the link goes down for 2 s mid-restore: with --recover-timeout-ms the restore completes, every page verified', async (t) => {
    const im = images(t, 'linkdown', 32 * MiB);
    const server = await startPageServer(im.full, { address: SRC_IP, wrap: SRC });
    t.teardown(() => server.stop());
    const link = (state: 'up' | 'down') => spawnSync('ip', ['-n', 'fl-src', 'link', 'set', 'fl-veth-src', state]);
    t.teardown(() => void link('up'));
    let downAt = 0;
    const r = await runRestore(
      remoteRun(im, {
        daemonWrap: DST,
        daemonArgs: ['--page-server', '--address', SRC_IP, '--port', String(server.port), '-v3', '--fill-chunk', '16', '--reply-timeout-ms', '700', '--recover-timeout-ms', '20000'],
        target: { pattern: 'seq', fraction: 1, threads: 1 },
        onDaemonStderr: (chunk) => {
          if (downAt || !chunk.includes('restore finished')) return;
          downAt = Date.now();
          link('down');
          setTimeout(() => link('up'), 2000);
        },
      }),
    );
    t.ok(downAt, 'the link went down after RESTORE_FINISHED, for 2 s');
    assertRestored(t, r, 3);
    t.match(r.daemon.stderr, /page server 10\.77\.0\.1:\d+: sent nothing for \d+ ms .*; reconnecting/, 'the silence was noticed');
    t.match(r.daemon.stderr, /connection is back after \d+ ms; \d+ unanswered requests sent again/, 'and the connection came back');
  });
});

function spawnRelay(listen: string, to: string, delayMs: number) {
  const child = require('node:child_process').spawn('ip', [...SRC.slice(1), process.execPath, path.join(ROOT, 'scripts/delay-relay.mjs'), '--listen', listen, '--to', to, '--delay-ms', String(delayMs)], {
    stdio: ['pipe', 'ignore', 'pipe'],
  }) as import('node:child_process').ChildProcessWithoutNullStreams;
  const port = new Promise<number>((resolve) => {
    let seen = '';
    child.stderr.on('data', (d: Buffer) => {
      seen += String(d);
      const m = /listening on .*:(\d+)/.exec(seen);
      if (m) resolve(Number(m[1]));
    });
  });
  return { child, port };
}

t.test('a page server that is not up yet is retried for a bounded time', async (t) => {
  const im = images(t, 'late', 8 * MiB);
  const free = await freePort();
  const r = await runRestore(remoteRun(im, { daemonArgs: ['--page-server', '--port', String(free), '--connect-timeout-ms', '600'] })).catch((e: Error) => e);
  t.ok(r instanceof Error, 'the daemon never became ready');
  t.match((r as Error).message, new RegExp(`page server 127\\.0\\.0\\.1:${free}: .*ECONNREFUSED.*still not up after 600 ms`));

  // Started 300 ms after the daemon: the retry picks it up and the restore completes.
  const port = await freePort();
  setTimeout(() => void startPageServer(im.full, { port }).then((s) => t.teardown(() => s.stop())), 300);
  const ok = await runRestore(remoteRun(im, { workDir: path.join(im.dir, 'w2'), daemonArgs: ['--page-server', '--port', String(port), '--connect-timeout-ms', '10000'] }));
  assertRestored(t, ok, 3);
});

t.test('a server that answers wrongly stops the tree', async (t) => {
  const im = images(t, 'liar', 8 * MiB);
  // Echoes every GET with a vaddr one page off: a restore must never take such data.
  const liar = net.createServer((s) => {
    s.on('error', () => undefined); // the daemon hangs up on it, as it should
    s.on('data', (b: Buffer) => {
      for (let o = 0; o + 32 <= b.length; o += 32) {
        const h = Buffer.from(b.subarray(o, o + 32));
        h.writeUInt32LE(0x00040006, 0);
        h.writeBigUInt64LE(1n, 8);
        h.writeBigUInt64LE(h.readBigUInt64LE(16) + 4096n, 16);
        s.write(Buffer.concat([h, Buffer.alloc(4096, 0xee)]));
      }
    });
  });
  await new Promise<void>((r) => liar.listen(0, '127.0.0.1', r));
  t.teardown(() => liar.close());
  const port = (liar.address() as net.AddressInfo).port;
  const r = await runRestore(remoteRun(im, { daemonArgs: ['--page-server', '--port', String(port)] }));
  assertStopped(t, r, new RegExp(`127\\.0\\.0\\.1:${port}.*vaddr`));
});

t.test('mutual TLS between daemon and page server', async (t) => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    t.plan(0, 'skip: openssl is not installed, cannot make test certificates');
    return;
  }
  const im = images(t, 'tls', 8 * MiB);
  const certs = path.join(im.dir, 'certs');
  fs.mkdirSync(certs);
  for (const name of ['server', 'client']) {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${name}`,
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', path.join(certs, `${name}.key`), '-out', path.join(certs, `${name}.pem`)], { stdio: 'ignore' });
  }
  const c = (f: string) => path.join(certs, f);
  const server = await startPageServer(im.full, { extra: ['--tls', '--tls-cert', c('server.pem'), '--tls-key', c('server.key'), '--tls-cacert', c('client.pem')] });
  t.teardown(() => server.stop());
  const r = await runRestore(
    remoteRun(im, { daemonArgs: ['--page-server', '--port', String(server.port), '--lanes', '2', '--tls', '--tls-cert', c('client.pem'), '--tls-key', c('client.key'), '--tls-cacert', c('server.pem')] }),
  );
  assertRestored(t, r, 3);
  // A client without --tls against this TLS server: the server's alert is recognised as TLS.
  const refused = await runRestore(remoteRun(im, { workDir: path.join(im.dir, 'w2'), daemonArgs: ['--page-server', '--port', String(server.port), '--connect-timeout-ms', '500'] })).catch((e: Error) => e);
  t.ok(refused instanceof Error || refused.daemon.code !== 0, 'a plain-TCP client gets nothing from a TLS server');
  const said = refused instanceof Error ? refused.message : refused.daemon.stderr;
  t.match(said, new RegExp(`page server 127\\.0\\.0\\.1:${server.port}: (answered with a TLS record: it runs with --tls|.* before any reply \\(does the page server run with --tls\\? then lazy-pages needs --tls too\\))`), 'the plain client points at TLS');
  await server.stop();
  t.match((await server.exit).stderr, /TLS handshake failed: .* \(a client without --tls\?\)/, 'the TLS server says the client may lack --tls');

  // A client with --tls against a plain server: the handshake fails, and both sides say why.
  const plain = await startPageServer(im.full);
  t.teardown(() => plain.stop());
  const tlsToPlain = await runRestore(
    remoteRun(im, { workDir: path.join(im.dir, 'w3'), daemonArgs: ['--page-server', '--port', String(plain.port), '--connect-timeout-ms', '500', '--tls', '--tls-cert', c('client.pem'), '--tls-key', c('client.key'), '--tls-cacert', c('server.pem')] }),
  ).catch((e: Error) => e);
  t.ok(tlsToPlain instanceof Error, 'the TLS client never becomes ready against a plain server');
  t.match((tlsToPlain as Error).message, /TLS handshake failed \(.*\): is the page server started with --tls\?/);
  await plain.stop();
  t.match((await plain.exit).stderr, /the client speaks TLS \(its first bytes are a TLS handshake\): start this page server with --tls too/);
});

